"""Side-by-side description of a run, straight from SQL: per version, per segment, replay fidelity,
resources and accounting. Judgement (intervals, gates) lives in harness.gates; this is what the
report shows next to it."""
from __future__ import annotations

import json
from typing import Any

import duckdb

from ..error_kinds import HARNESS_ERROR, failed_sql
from ..store import analysed_legs

__all__ = ["unpack", "version_overview", "segment_overview", "replay_fidelity", "resource_overview", "accounting"]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def version_overview(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    # One list-valued quantile per column: DuckDB keeps one copy of the values per quantile call.
    rows = _rows(con, f"""
        select l.version, count(*) as legs,
          quantile_cont(l.latency_ms, [0.5, 0.95, 0.99]) as _latency_q, avg(l.latency_ms) as mean_ms,
          max(l.latency_ms) as max_ms,
          avg({failed_sql("l", "o")}::int) as error_rate,
          avg(coalesce(l.error_kind = 'timeout', false)::int) as timeout_rate,
          avg(coalesce(l.error_kind = 'http_3xx', false)::int) as http_3xx_rate,
          avg(coalesce(l.error_kind = 'http_4xx', false)::int) as http_4xx_rate,
          avg(coalesce(l.error_kind = 'http_5xx', false)::int) as http_5xx_rate,
          count(*) filter (where l.schema_valid is not null) as schema_judged,
          count(*) filter (where l.schema_valid = false) as schema_failures,
          avg(l.schema_valid::int) as schema_pass_rate,
          avg(l.response_bytes) as mean_response_bytes,
          quantile_cont(l.time_to_first_token_ms, [0.5, 0.95]) as _ttft_q,
          sum(l.completion_tokens) as completion_tokens
        from {analysed_legs()}
          left join legs o on o.order_idx = l.order_idx and o.version <> l.version
        group by 1 order by 1""")
    for r in rows:
        unpack(r, "_latency_q", ("p50_ms", "p95_ms", "p99_ms"))
        unpack(r, "_ttft_q", ("ttft_p50_ms", "ttft_p95_ms"))
    out = {r.pop("version"): r for r in rows}
    for v, score in con.execute("select version, avg(score) from scores group by 1").fetchall():
        out.setdefault(v, {})["review_score"] = score
    errors = _rows(con, f"""select version, error_kind, count(*) as n from {analysed_legs()}
                            where error_kind is not null group by 1, 2 order by 1, 3 desc""")
    for e in errors:
        out.setdefault(e["version"], {}).setdefault("error_kinds", {})[e["error_kind"]] = e["n"]
    return out


def unpack(row: dict[str, Any], key: str, names: tuple[str, ...]) -> None:
    """Spread a list-valued quantile_cont column over named keys (None where there were no values)."""
    values = row.pop(key) or [None] * len(names)
    row.update(zip(names, values))


def segment_overview(con: duckdb.DuckDBPyConnection, segments: tuple[str, ...], paired: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cand_join = ("left join legs c on c.order_idx = r.order_idx and c.version = 'candidate'" if paired else "")
    for s in ("route", *[x for x in segments if x != "route"]):
        cand = f"""quantile_cont(c.latency_ms, 0.95) as candidate_p95_ms,
                  avg({failed_sql("c", "b")}::int) as candidate_error_rate,
                  avg(c.schema_valid::int) as candidate_schema_pass_rate,""" if paired else ""
        rows = _rows(con, f"""
            select '{s}' as segment_name, r."{s}"::varchar as segment_value, count(*) as n,
              quantile_cont(b.latency_ms, 0.95) as baseline_p95_ms,
              avg({failed_sql("b", "c" if paired else None)}::int) as baseline_error_rate,
              avg(b.schema_valid::int) as baseline_schema_pass_rate, {cand} 0 as _
            from requests r
            left join legs b on b.order_idx = r.order_idx and b.version = 'baseline' {cand_join}
            where not r.warmup group by 1, 2 order by 2""")
        for r in rows:
            r.pop("_")
            r["segment"] = f"{r['segment_name']}={r['segment_value']}"
            out.append(r)
    return out


def replay_fidelity(con: duckdb.DuckDBPyConnection, lag_bound_ms: float) -> dict[str, Any]:
    row = _rows(con, """select quantile_cont(send_lag_ms, [0.5, 0.99]) as _lag_q, max(send_lag_ms) as lag_max_ms
                        from legs""")[0]
    unpack(row, "_lag_q", ("lag_p50_ms", "lag_p99_ms"))
    row["pair_skew_p99_ms"] = con.execute("""
        select quantile_cont(abs(epoch(c.sent_at) - epoch(b.sent_at)) * 1000, 0.99)
        from legs b join legs c on c.order_idx = b.order_idx and c.version = 'candidate'
        where b.version = 'baseline'""").fetchall()[0][0]
    ev = con.execute("select detail from events where kind = 'replay' order by occurred_at desc limit 1").fetchone()
    info = json.loads(ev[0]) if ev else {}
    p99 = row["lag_p99_ms"]
    saturated = p99 is not None and p99 > lag_bound_ms
    row.update({k: info.get(k) for k in ("wall_s", "sink_failures", "last_sink_error", "dispatched", "skipped_in_flight",
                                         "interrupted", "stopped_early", "ended_by")})
    row["lag_bound_ms"] = lag_bound_ms
    row["saturated"] = saturated
    row["warning"] = (f"load generator saturated: results understate latency (send lag p99 (whole run) {p99:.1f} ms > "
                      f"{lag_bound_ms:g} ms)") if saturated else None
    return row


def resource_overview(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    rows = _rows(con, """select version, count(*) as samples, max(rss_mb) as peak_rss_mb, avg(rss_mb) as mean_rss_mb,
                            max(gpu_memory_mb) as peak_gpu_memory_mb, max(restarts) as restarts,
                            max(oom_events) as oom_events, max(cpu_percent) as peak_cpu_percent
                         from resources group by 1""")
    return {r.pop("version"): r for r in rows}


def accounting(con: duckdb.DuckDBPyConnection, versions: tuple[str, ...]) -> dict[str, Any]:
    n_req = con.execute("select count(*) from requests").fetchone()[0]  # type: ignore[index]
    warm = con.execute("select count(*) from requests where warmup").fetchone()[0]  # type: ignore[index]
    n_legs = con.execute("select count(*) from legs").fetchone()[0]  # type: ignore[index]
    n_bad = con.execute("select count(*) from bad_records").fetchone()[0]  # type: ignore[index]
    n_harness = con.execute(f"select count(*) from legs where error_kind = '{HARNESS_ERROR}'").fetchone()[0]  # type: ignore[index]
    skipped = dict(con.execute("select reason, count(*) from skipped group by 1 order by 2 desc").fetchall())
    ev = con.execute("select detail from events where kind = 'traffic' limit 1").fetchone()
    traffic = json.loads(ev[0]) if ev else {}
    captured = traffic.get("records_read")
    loops = int(traffic.get("loops", 1))
    unique = con.execute("select count(*) from requests where loop = 0").fetchone()[0]  # type: ignore[index]
    n_skip = sum(skipped.values())
    expected_legs = len(versions) * n_req
    balanced = captured is None or captured == unique + n_skip + n_bad or loops > 1
    return {
        "captured": captured, "loops": loops, "captured_balanced": balanced,
        "replayed": n_req, "warmup": warm, "analysed": n_req - warm, "skipped": skipped, "skipped_total": n_skip,
        "bad_records": n_bad, "legs": n_legs, "harness_errors": n_harness, "legs_expected": expected_legs,
        "accounting_ok": n_legs == expected_legs and balanced,
    }
