"""What the judgement reads from results.duckdb: one row per analysable pair, as numpy columns.

Warm-up requests are sent but never analysed. DuckDB does the joins and the per-leg classification;
Python receives flat arrays. `error` counts what breaks a consumer (timeouts, refused or reset
connections, 5xx, answers that are not JSON, over-size or truncated answers); 4xx answers are the
request's fault and are counted separately. Schema validity is judged on 2xx answers only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ..store import open_results

__all__ = ["PairData", "load_pairs", "ERROR_KINDS_COUNTED", "DETECTOR_COLUMNS", "RunInfo", "load_run_info"]

DETECTOR_COLUMNS = ("abstained", "cited", "fallback_model", "tool_calls_valid")
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
    # extracted outputs and stream timing (nan / None where the leg has none)
    prediction: dict[str, np.ndarray] = field(default_factory=dict)  # object arrays, None where no label
    confidence: dict[str, np.ndarray] = field(default_factory=dict)
    ttft: dict[str, np.ndarray] = field(default_factory=dict)
    inter_token: dict[str, np.ndarray] = field(default_factory=dict)  # per-leg mean gap between token events
    completion_tokens: dict[str, np.ndarray] = field(default_factory=dict)
    # detectors: DETECTOR_COLUMNS name -> version -> bool; judged is False where the detector said nothing
    detected: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    detector_judged: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # pair-level output comparison (harness.analysis.output_diff), set by the judge; None until then
    field_diff: np.ndarray | None = None
    field_judged: np.ndarray | None = None


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
            coalesce(s_{v[0]}.score, 'nan'::double) as {v}_score,
            {v[0]}.prediction as {v}_prediction,
            coalesce({v[0]}.confidence, 'nan'::double) as {v}_confidence,
            coalesce({v[0]}.time_to_first_token_ms, 'nan'::double) as {v}_ttft,
            coalesce({v[0]}.inter_token_ms_mean, 'nan'::double) as {v}_itl,
            coalesce({v[0]}.completion_tokens::double, 'nan'::double) as {v}_completion_tokens,
            {", ".join(f"coalesce({v[0]}.{d}, false) as {v}_{d}, ({v[0]}.{d} is not null) as {v}_{d}_judged"
                       for d in DETECTOR_COLUMNS)}""")
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
        out.prediction[v] = np.array([None if x is None else str(x) for x in _object_list(cols[f"{v}_prediction"])],
                                     dtype=object)
        out.confidence[v] = np.asarray(cols[f"{v}_confidence"], dtype=float)
        out.ttft[v] = np.asarray(cols[f"{v}_ttft"], dtype=float)
        out.inter_token[v] = np.asarray(cols[f"{v}_itl"], dtype=float)
        out.completion_tokens[v] = np.asarray(cols[f"{v}_completion_tokens"], dtype=float)
        for d in DETECTOR_COLUMNS:
            out.detected.setdefault(d, {})[v] = np.asarray(cols[f"{v}_{d}"], dtype=bool)
            out.detector_judged.setdefault(d, {})[v] = np.asarray(cols[f"{v}_{d}_judged"], dtype=bool)
    return out


def _object_list(column: Any) -> list[Any]:
    # fetchnumpy gives a masked array for a column with nulls, a plain one otherwise
    if isinstance(column, np.ma.MaskedArray):
        return [None if m else x for x, m in zip(column.data.tolist(), np.ma.getmaskarray(column).tolist())]
    return list(np.asarray(column, dtype=object))


def open_run(run_dir: Path) -> duckdb.DuckDBPyConnection:
    return open_results(run_dir / "results.duckdb", read_only=True)
