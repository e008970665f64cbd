"""A synthetic run folder with N pairs, built the way a real run builds it: the demo scenario
(scenarios/fraud_demo.yaml: five segments, the seed's five gates, route output schemas), a schedule
Parquet written by DuckDB, harness.store.RunStore.create (so every table and view is exactly what a
real run has), then legs, resources, events and review scores inserted with SQL.

Planted effects, so the gates have something to find: candidate latency +3 % overall and +25 % for
tenant=enterprise in ap-south; candidate errors 0.30 % vs baseline 0.20 %; candidate schema failures
0.2 %; review scores for 1 % of the requests (candidate 0.01 lower). Each leg's output_json is its own
answer (label, confidence, model version, a nested object), so the field comparison does real work.
Used by analysis_scale.py and report_scale.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb

from _common import ROOT

SCENARIO = ROOT / "scenarios" / "fraud_demo.yaml"


def build_run(run_dir: Path, n_pairs: int, threads: int | None = None) -> dict[str, float]:
    from harness import __version__
    from harness.scenario import load_scenario
    from harness.store import RunMeta, RunStore

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True)
    work = run_dir / ".work"
    work.mkdir()
    scenario = load_scenario(SCENARIO)
    seg_names = tuple(s.name for s in scenario.segments)
    con = duckdb.connect()
    if threads:
        con.execute(f"set threads = {threads}")
    sched, skipped, bad = work / "schedule.parquet", work / "skipped.parquet", work / "bad.parquet"
    # Segment values as prepare would derive them (bucket labels of [1, 8, 32], cross = "a & b").
    con.execute(f"""copy (
        with base as (
          select i, (hash(i, 1) % 1000)::bigint as h1, (hash(i, 2) % 1000)::bigint as h2, (hash(i, 3) % 1000)::bigint as h3 from range({n_pairs}) t(i))
        select 'r' || lpad(i::varchar, 8, '0') as request_id, i as order_idx, i + 1 as seq, 0 as loop,
               i + 1 as source_line, to_timestamp(1793000000 + i * 0.001) as captured_at, i * 0.001 as offset_s,
               'POST' as method,
               case when h1 < 600 then '/v1/score?client=web' else '/v1/accounts/' || (h2 * 7919) || '/score' end as path,
               case when h1 < 600 then '/v1/score' else '/v1/accounts/{{id}}/score' end as route,
               ['free', 'pro', 'enterprise'][1 + h2 % 3] as seg__tenant,
               ['us-east', 'eu-west', 'ap-south', 'sa-east'][1 + h3 % 4] as seg__geography,
               ['<1', '1-7', '8-31', '32+'][1 + (case when h1 % 10 < 6 then 1 when h1 % 10 < 9 then 2 else 3 end)] as seg__request_size,
               seg__tenant || ' & ' || seg__request_size as seg__tenant_x_size,
               200 + h1 as request_bytes, false as warmup,
               '[["Content-Type","application/json"],["X-Tenant-Tier","' || seg__tenant || '"]]' as headers_json,
               null::varchar as captured_request_id, null::integer as production_status,
               null::bigint as batch_size
        from base) to '{sched}' (format parquet)""")
    con.execute(f"""copy (select 0::bigint as source_line, now() as captured_at, 'GET' as method, '/' as path,
                    '/' as route, 'x' as reason, 'x' as seg__tenant, 'x' as seg__geography, 'x' as seg__request_size,
                    'x' as seg__tenant_x_size limit 0) to '{skipped}' (format parquet)""")
    con.execute(f"copy (select 'x' as source, 0::bigint as line, 'x' as reason limit 0) to '{bad}' (format parquet)")
    con.close()
    t_sched = time.perf_counter()

    store = RunStore(run_dir / "results.duckdb")
    if threads:
        store.con.execute(f"set threads = {threads}")
    meta = RunMeta(run_id=run_dir.name, scenario=scenario.name, scenario_sha256=scenario.sha256,
                   config_json=json.dumps(scenario.stored_config(), default=str), capture_path="synthetic",
                   capture_sha256="0" * 64, harness_version=__version__, git_commit=None,
                   baseline_url="http://127.0.0.1:8001", candidate_url="http://127.0.0.1:8002", mode="paired",
                   speed=1.0, segments=seg_names)
    store.create(meta, sched, skipped, bad)
    c = store.con
    c.execute("insert into events values (now(), 'traffic', ?)", [json.dumps(
        {"records_read": n_pairs, "loops": 1, "format": "jsonl", "span_s": n_pairs * 0.001})])
    for v, vi in (("baseline", 0), ("candidate", 1)):
        slow = "1.0" if v == "baseline" else \
            "(case when r.tenant = 'enterprise' and r.geography = 'ap-south' then 1.25 else 1.03 end)"
        err = 0.002 if v == "baseline" else 0.003
        bad_schema = 0.0 if v == "baseline" else 0.002
        c.execute(f"""insert into legs (request_id, version, order_idx, intended_at, sent_at, done_at, send_lag_ms,
                latency_ms, service_ms, status_code, error_kind, error_detail, response_bytes, schema_valid,
                schema_errors, prediction, confidence, model_version, output_json, worker)
            with x as (
              select r.request_id, r.order_idx, 1793000000 + r.offset_s as t,
                     0.3 + (hash(r.order_idx, {vi}, 9) % 1000) / 1000.0 as lag,
                     {slow} * 20 * exp(0.35 * sqrt(-2 * ln(((hash(r.order_idx, {vi}, 1) % 999983) + 1) / 999984.0))
                         * cos(2 * pi() * ((hash(r.order_idx, {vi}, 2) % 999983) / 999983.0))) as svc,
                     (hash(r.order_idx, {vi}, 3) % 1000000) / 1000000.0 as u
              from requests r)
            select request_id, '{v}', order_idx, to_timestamp(t), to_timestamp(t + lag / 1000),
                   to_timestamp(t + (lag + svc) / 1000), lag, lag + svc, svc,
                   case when u < {err} then 503 else 200 end,
                   case when u < {err} then 'http_5xx' when u < {err + bad_schema} then 'schema' end,
                   case when u < {err} then 'Service Unavailable' end, 48,
                   case when u < {err} then null else u >= {err + bad_schema} end,
                   case when u >= {err} and u < {err + bad_schema} then '$.score: missing' end,
                   case when u < 0.1 then 'fraud' else 'legit' end, u, '{v}',
                   -- each version's own answer, as the columns above say: most pairs differ in
                   -- confidence and model_version, 10 % in the label, so the field diff has work to do
                   '{{"prediction":"' || (case when u < 0.1 then 'fraud' else 'legit' end) || '","confidence":'
                     || round(u, 4)::varchar || ',"model_version":"{v}","explain":{{"top_feature":"amount"}}}}',
                   'local'
            from x""")
        c.execute(f"""insert into resources select '{v}', to_timestamp(1793000000 + i), 1000 + {vi}, 800 + i % 50 + {vi} * 100,
                      50.0, null, 0, 0, 'psutil' from range({max(1, int(n_pairs * 0.001))}) t(i)""")
        c.execute(f"""insert into scores select request_id, '{v}',
                      0.8 - {0.01 * vi} + ((hash(order_idx, {vi}, 5) % 1000) / 1000.0 - 0.5) * 0.2, 'synthetic'
                      from requests where hash(order_idx, 7) % 100 = 0""")
    c.execute("insert into events values (now(), 'replay', ?)", [json.dumps(
        {"lag_p50_ms": 0.8, "lag_p99_ms": 1.3, "lag_bound_ms": 5.0, "wall_s": n_pairs * 0.001, "sink_failures": 0,
         "last_sink_error": None, "dispatched": n_pairs, "skipped_in_flight": 0, "interrupted": None,
         "stopped_early": None})])
    store.finish("complete")
    store.close()
    for p in (sched, skipped, bad):
        p.unlink()
    work.rmdir()
    t_end = time.perf_counter()
    return {"schedule_s": t_sched - t0, "store_s": t_end - t_sched, "total_s": t_end - t0,
            "db_mb": (run_dir / "results.duckdb").stat().st_size / 2**20}
