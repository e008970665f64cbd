"""What the gate report reads from results.duckdb beyond summary.json: down-sampled series for the
charts and bounded samples for the evidence tables.

Every query aggregates in DuckDB and returns at most a few hundred rows, whatever the size of the run:
quantile grids instead of raw latencies, time buckets instead of legs, the first few examples of each
failure kind instead of all of them."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb

from ..analysis.overview import unpack
from ..scenario import RedactConfig
from ..store import analysed_legs
from ..traffic.redaction import Redactor

__all__ = ["ReportData", "load_report_data", "CDF_LEVELS", "TIME_BUCKETS"]

# Probability levels for the CDF: dense in the body, then the tail in decades up to 99.99 %.
CDF_LEVELS: tuple[float, ...] = tuple(sorted({round(i / 100, 4) for i in range(0, 100)}
                                             | {0.9925, 0.995, 0.9975, 0.999, 0.9995, 0.9999, 1.0}))
TIME_BUCKETS = 60
RESOURCE_BUCKETS = 240
EXAMPLES_PER_KIND = 10
EXAMPLE_OUTPUT_CHARS = 300
BAD_RECORDS_SHOWN = 50


@dataclass
class ReportData:
    cdf: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # version -> [(level, latency_ms)]
    cdf_n: dict[str, int] = field(default_factory=dict)  # version -> legs behind its quantiles
    over_time: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # version -> buckets
    bucket_s: float = 0.0
    memory: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)  # version -> samples
    error_kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # version -> kind -> count (analysed legs)
    analysed_legs: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    example_totals: dict[tuple[str, str], int] = field(default_factory=dict)
    bad_records: list[dict[str, Any]] = field(default_factory=list)
    bad_records_total: int = 0
    llm: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def load_report_data(con: duckdb.DuckDBPyConnection) -> ReportData:
    data = ReportData()
    origin = _origin(con)
    _latency_cdf(con, data)
    if origin is not None:
        _latency_over_time(con, data, origin)
        _memory_timeline(con, data, origin)
    _error_kinds(con, data)
    _failing_examples(con, data, _redactor(con))
    _bad_records(con, data)
    _llm_metrics(con, data)
    return data


def _latency_cdf(con: duckdb.DuckDBPyConnection, data: ReportData) -> None:
    levels = list(CDF_LEVELS)
    literal = "[" + ", ".join(repr(q) for q in levels) + "]"  # quantile levels must be constants in DuckDB
    for version, n, values in con.execute(
            f"""select l.version, count(*), quantile_cont(l.latency_ms, {literal}) from {analysed_legs()}
                where l.latency_ms is not null group by 1 order by 1""").fetchall():
        data.cdf[version] = [(q, float(v)) for q, v in zip(levels, values) if v is not None]
        data.cdf_n[version] = int(n)


def _origin(con: duckdb.DuckDBPyConnection) -> float | None:
    """Time zero of the charts: the first intended send (else the first resource sample), so the latency
    and memory timelines share one axis."""
    row = con.execute("""select coalesce((select min(epoch(intended_at)) from legs),
                                         (select min(epoch(sampled_at)) from resources))""").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _latency_over_time(con: duckdb.DuckDBPyConnection, data: ReportData, t0: float) -> None:
    span = con.execute("select max(epoch(intended_at)) from legs").fetchone()
    if span is None or span[0] is None:
        return
    t1 = float(span[0])
    width = _nice_width((t1 - t0) / TIME_BUCKETS)
    n_buckets = int((t1 - t0) // width) + 1
    data.bucket_s = width
    rows = _rows(con, f"""
        select l.version, least(floor((epoch(l.intended_at) - ?) / ?), ? - 1)::int as bucket, count(*) as n,
          quantile_cont(l.latency_ms, [0.5, 0.95]) as _q, avg((l.error_kind is not null)::int) as failed_fraction
        from {analysed_legs()}
        group by 1, 2 order by 1, 2""", [t0, width, n_buckets])
    for r in rows:
        unpack(r, "_q", ("p50_ms", "p95_ms"))
        data.over_time.setdefault(r.pop("version"), []).append(
            {"t_s": (r["bucket"] + 0.5) * width, "n": r["n"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
             "failed_fraction": r["failed_fraction"]})


_NICE_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
           3600, 7200, 10800, 21600, 43200, 86400)


def _nice_width(raw_s: float) -> float:
    """The smallest round duration (1-2-5 below a second, then 1, 2, 5, 10, 15, 30 s or min, 1, 2, 3, 6, 12 h,
    a day) at least raw_s: buckets a reader can name."""
    for width in _NICE_S:
        if width >= raw_s * (1 - 1e-9):
            return float(width)
    return 86400.0 * math.ceil(raw_s / 86400.0)


def _memory_timeline(con: duckdb.DuckDBPyConnection, data: ReportData, origin: float) -> None:
    span = con.execute("select min(epoch(sampled_at)), max(epoch(sampled_at)) from resources").fetchone()
    if span is None or span[0] is None:
        return
    t0, t1 = float(span[0]), float(span[1])
    width = max((t1 - t0) / RESOURCE_BUCKETS, 1e-3)
    shift = t0 - origin
    rows = _rows(con, """
        select version, least(floor((epoch(sampled_at) - ?) / ?), ? - 1)::int as bucket,
          max(rss_mb) as rss_mb, max(gpu_memory_mb) as gpu_memory_mb, avg(cpu_percent) as cpu_percent
        from resources group by 1, 2 order by 1, 2""", [t0, width, RESOURCE_BUCKETS])
    for r in rows:
        data.memory.setdefault(r.pop("version"), []).append(
            {"t_s": shift + (r["bucket"] + 0.5) * width, "rss_mb": r["rss_mb"], "gpu_memory_mb": r["gpu_memory_mb"],
             "cpu_percent": r["cpu_percent"]})


def _error_kinds(con: duckdb.DuckDBPyConnection, data: ReportData) -> None:
    for version, n in con.execute(f"select l.version, count(*) from {analysed_legs()} group by 1").fetchall():
        data.analysed_legs[version] = int(n)
    for version, kind, n in con.execute(
            f"""select l.version, l.error_kind, count(*) from {analysed_legs()}
                where l.error_kind is not null group by 1, 2 order by 1, 3 desc""").fetchall():
        data.error_kinds.setdefault(version, {})[kind] = int(n)


def _redactor(con: duckdb.DuckDBPyConnection) -> Redactor:
    row = con.execute("select config from runs limit 1").fetchone()
    try:
        config = json.loads(row[0]) if row and row[0] else {}
        redact = (config.get("traffic") or {}).get("redact") or {}
        return Redactor(RedactConfig(**{k: tuple(v) for k, v in redact.items()}))
    except (TypeError, ValueError, AttributeError):
        # A config this version cannot read still gets the default masking of credential-named keys.
        return Redactor()


def _failing_examples(con: duckdb.DuckDBPyConnection, data: ReportData, redactor: Redactor) -> None:
    rows = _rows(con, """
        with failing as (
          select l.request_id, l.version, r.route, r.method, coalesce(l.error_kind, 'schema') as kind, l.error_kind,
            l.status_code, l.schema_errors, l.error_detail, l.output_json, l.order_idx
          from legs l join requests r on r.order_idx = l.order_idx
          where l.error_kind is not null or l.schema_valid = false),
        ranked as (
          select *, row_number() over (partition by version, kind order by order_idx, request_id) as rn,
            count(*) over (partition by version, kind) as total
          from failing)
        select * exclude (rn) from ranked where rn <= ?
        order by version = 'candidate' desc, version, total desc, kind, order_idx""",
                 [EXAMPLES_PER_KIND])
    for r in rows:
        data.example_totals[(r["version"], r["kind"])] = int(r.pop("total"))
        output = r.pop("output_json")
        r["output"] = _shorten(redactor.body(output.encode()).decode(errors="replace") if output else "")
        r["schema_errors"] = _shorten(r["schema_errors"] or "")
        r["error_detail"] = _shorten(r["error_detail"] or "")
        data.examples.append(r)


def _shorten(text: str, limit: int = EXAMPLE_OUTPUT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bad_records(con: duckdb.DuckDBPyConnection, data: ReportData) -> None:
    data.bad_records_total = int(con.execute("select count(*) from bad_records").fetchone()[0])  # type: ignore[index]
    data.bad_records = _rows(con, "select source, line, reason from bad_records order by source, line limit ?",
                             [BAD_RECORDS_SHOWN])
    for r in data.bad_records:
        r["reason"] = _shorten(str(r["reason"] or ""))


def _llm_metrics(con: duckdb.DuckDBPyConnection, data: ReportData) -> None:
    columns = {r[0] for r in con.execute("describe legs").fetchall()}
    # inter-token latency arrived with streaming support; older results.duckdb files have no such column
    itl = ("quantile_cont(inter_token_ms_mean, [0.5, 0.95]) as _itl_q,"
           if "inter_token_ms_mean" in columns else "null as _itl_q,")
    rows = _rows(con, f"""
        select l.version, count(time_to_first_token_ms) as ttft_n,
          quantile_cont(time_to_first_token_ms, [0.5, 0.95]) as _ttft_q, {itl}
          avg(prompt_tokens) as mean_prompt_tokens, avg(completion_tokens) as mean_completion_tokens,
          sum(completion_tokens) as completion_tokens,
          sum(completion_tokens) / nullif(sum(service_ms) filter (where completion_tokens is not null), 0) * 1000
            as completion_tokens_per_s
        from {analysed_legs()} group by 1""")
    for r in rows:
        unpack(r, "_ttft_q", ("ttft_p50_ms", "ttft_p95_ms"))
        unpack(r, "_itl_q", ("itl_p50_ms", "itl_p95_ms"))
        version = r.pop("version")
        if r["ttft_n"] or r["completion_tokens"] is not None or r["mean_prompt_tokens"] is not None:
            data.llm[version] = {k: (float(v) if v is not None else None) for k, v in r.items()}
