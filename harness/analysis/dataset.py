"""What the judgement reads from results.duckdb: one row per analysable pair, as numpy columns.

Warm-up requests are sent but never analysed. DuckDB does the joins and the per-leg classification;
Python receives flat arrays. `error` counts what breaks a consumer (timeouts, refused or reset
connections, 5xx, answers that are not JSON, over-size or truncated answers); 4xx answers are the
request's fault and are counted separately. Schema validity is judged on 2xx answers only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ..store import open_results

__all__ = ["PairData", "load_pairs", "ERROR_KINDS_COUNTED", "RunInfo", "load_run_info"]

ERROR_KINDS_COUNTED = ("timeout", "connect", "reset", "http_5xx", "invalid_json", "too_large", "truncated_stream",
                       "client")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    scenario: str
    status: str
    mode: str
    config: dict[str, Any]
    segments: tuple[str, ...]
    row: dict[str, Any]


@dataclass
class PairData:
    """Columns of analysable pairs; candidate columns are None in baseline-only mode."""

    request_id: np.ndarray
    segments: dict[str, np.ndarray]
    latency: dict[str, np.ndarray]
    error: dict[str, np.ndarray]
    timeout: dict[str, np.ndarray]
    schema_judged: dict[str, np.ndarray]
    schema_valid: dict[str, np.ndarray]
    status_4xx: dict[str, np.ndarray]
    score: dict[str, np.ndarray]  # nan where no review score
    n: int


def load_run_info(con: duckdb.DuckDBPyConnection) -> RunInfo:
    cur = con.execute("select * from runs limit 1")
    cols = [d[0] for d in cur.description]
    values = cur.fetchone()
    if values is None:
        raise ValueError("results.duckdb has no run")
    row = dict(zip(cols, values))
    config = json.loads(row["config"]) if row.get("config") else {}
    segments = tuple(json.loads(row["segments"])) if row.get("segments") else ()
    return RunInfo(run_id=row["id"], scenario=row["scenario"], status=row["status"], mode=row["mode"],
                   config=config, segments=segments, row=row)


def load_pairs(con: duckdb.DuckDBPyConnection, segments: tuple[str, ...], versions: tuple[str, ...]) -> PairData:
    kinds = ", ".join(f"'{k}'" for k in ERROR_KINDS_COUNTED)
    seg_cols = "".join(f', r."{s}"::varchar as "seg__{s}"' for s in segments)
    per_version = []
    for v in versions:
        per_version.append(f"""
            {v[0]}.latency_ms as {v}_latency,
            coalesce({v[0]}.error_kind in ({kinds}), false) as {v}_error,
            coalesce({v[0]}.error_kind = 'timeout', false) as {v}_timeout,
            ({v[0]}.schema_valid is not null) as {v}_schema_judged,
            coalesce({v[0]}.schema_valid, false) as {v}_schema_valid,
            coalesce({v[0]}.error_kind = 'http_4xx', false) as {v}_4xx,
            coalesce(s_{v[0]}.score, 'nan'::double) as {v}_score""")
    joins = "".join(f"""
        join legs {v[0]} on {v[0]}.request_id = r.request_id and {v[0]}.version = '{v}'
        left join (select request_id, avg(score) as score from scores where version = '{v}' group by 1) s_{v[0]}
               on s_{v[0]}.request_id = r.request_id""" for v in versions)
    sql = f"""select r.request_id {seg_cols}, {", ".join(per_version)}
              from requests r {joins}
              where not r.warmup
              order by r.order_idx"""
    cols = con.execute(sql).fetchnumpy()
    seg = {s: np.asarray(cols[f"seg__{s}"]).astype(str) for s in segments}
    out = PairData(request_id=np.asarray(cols["request_id"]), segments=seg, latency={}, error={}, timeout={},
                   schema_judged={}, schema_valid={}, status_4xx={}, score={}, n=len(cols["request_id"]))
    for v in versions:
        out.latency[v] = np.asarray(cols[f"{v}_latency"], dtype=float)
        out.error[v] = np.asarray(cols[f"{v}_error"], dtype=bool)
        out.timeout[v] = np.asarray(cols[f"{v}_timeout"], dtype=bool)
        out.schema_judged[v] = np.asarray(cols[f"{v}_schema_judged"], dtype=bool)
        out.schema_valid[v] = np.asarray(cols[f"{v}_schema_valid"], dtype=bool)
        out.status_4xx[v] = np.asarray(cols[f"{v}_4xx"], dtype=bool)
        out.score[v] = np.asarray(cols[f"{v}_score"], dtype=float)
    return out


def open_run(run_dir: Path) -> duckdb.DuckDBPyConnection:
    return open_results(run_dir / "results.duckdb", read_only=True)
