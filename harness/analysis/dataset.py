"""What the judgement reads from results.duckdb: one row per analysable pair, as numpy columns.

Warm-up requests are sent but never analysed. DuckDB does the joins and the per-leg classification;
Python receives flat arrays. Pairs with a harness_error leg are left out (harness, not a model, failed
there). `error` counts what breaks a consumer (timeouts, refused or reset
connections, 5xx, answers that are not JSON, over-size or truncated answers); 4xx answers are the
request's fault and are counted separately, and 3xx answers too, except where the other version of the pair
answered otherwise (error_kinds.pair_failed). Schema validity is judged on 2xx answers only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..error_kinds import CONSUMER_ERROR_KINDS_SQL, HARNESS_ERROR
from ..errors import StoreError
from ..store import open_results

__all__ = ["Coded", "PairData", "load_pairs", "DETECTOR_COLUMNS", "RunInfo", "load_run_info"]

DETECTOR_COLUMNS = ("abstained", "cited", "fallback_model", "tool_calls_valid")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    scenario: str
    status: str
    mode: str
    config: dict[str, Any]
    segments: tuple[str, ...]
    row: dict[str, Any]


@dataclass(frozen=True)
class Coded:
    """A column of labels as int32 codes into sorted labels; -1 where there is none.

    Segments and predictions repeat a few values millions of times: as codes a 10 M-pair column is
    40 MB, and comparing codes is what the gates and per-segment summaries do most."""

    codes: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def from_values(cls, values: Any) -> "Coded":
        return cls.joint({"x": values})["x"]

    @classmethod
    def joint(cls, columns: Mapping[str, Any]) -> dict[str, "Coded"]:
        """Several columns coded over one label set (so codes compare across them); None is -1."""
        arrays = {k: np.asarray(v, dtype=object) for k, v in columns.items()}
        seen = sorted({str(x) for a in arrays.values() for x in a.tolist() if x is not None})
        index = {lbl: i for i, lbl in enumerate(seen)}
        return {k: cls(np.fromiter((-1 if x is None else index[str(x)] for x in a.tolist()), dtype=np.int32,
                                   count=len(a)), tuple(seen)) for k, a in arrays.items()}

    def __len__(self) -> int:
        return len(self.codes)

    def code(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            return -2  # matches nothing, not even "no label"

    def equals(self, label: str) -> np.ndarray:
        return self.codes == self.code(label)

    def present(self, within: np.ndarray | None = None) -> list[str]:
        """The labels that occur (where `within` is true), sorted."""
        codes = self.codes if within is None else self.codes[within]
        counts = np.bincount(codes[codes >= 0], minlength=len(self.labels))
        return [self.labels[i] for i in np.flatnonzero(counts)]

    def has(self) -> np.ndarray:
        return self.codes >= 0

    def decode(self) -> np.ndarray:
        """Back to an object array of labels (None where there is none): for small selections only."""
        table = np.array(list(self.labels) + [None], dtype=object)
        return table[np.where(self.codes >= 0, self.codes, len(self.labels))]


@dataclass
class PairData:
    """Columns of analysable pairs in capture order; candidate columns are absent in baseline-only mode.

    Segments and predictions are `Coded` (plain arrays of labels given to the constructor are coded
    there). Columns that no leg of the run carries (token timing, detectors) are read-only broadcast
    constants, so they cost no memory at any size."""

    order_idx: np.ndarray
    segments: dict[str, Coded]
    latency: dict[str, np.ndarray]
    error: dict[str, np.ndarray]
    timeout: dict[str, np.ndarray]
    schema_judged: dict[str, np.ndarray]
    schema_valid: dict[str, np.ndarray]
    status_4xx: dict[str, np.ndarray]
    score: dict[str, np.ndarray]  # nan where no review score
    n: int
    # extracted outputs and stream timing (nan / no label where the leg has none)
    prediction: dict[str, Coded] = field(default_factory=dict)  # one label set for both versions
    confidence: dict[str, np.ndarray] = field(default_factory=dict)
    ttft: dict[str, np.ndarray] = field(default_factory=dict)
    inter_token: dict[str, np.ndarray] = field(default_factory=dict)  # per-leg mean gap between token events
    completion_tokens: dict[str, np.ndarray] = field(default_factory=dict)
    service: dict[str, np.ndarray] = field(default_factory=dict)  # service_ms: from the actual send
    # detectors: DETECTOR_COLUMNS name -> version -> bool; judged is False where the detector said nothing
    detected: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    detector_judged: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # pair-level output comparison (harness.analysis.output_diff), set by the judge; None until then
    field_diff: np.ndarray | None = None
    field_judged: np.ndarray | None = None
    # batched answers row by row (harness.analysis.rows.RowData), set by the judge; None without rows
    rows: Any = None
    status_3xx: dict[str, np.ndarray] = field(default_factory=dict)  # redirects: counted apart, as 4xx answers are
    # which captured input each pair replays, as codes, where some input was replayed more than once (a
    # `traffic.loops` run, records sharing a captured request id); None where every pair is its own input
    unit: np.ndarray | None = None

    def refusals(self) -> dict[str, np.ndarray]:
        """Per version, the legs answered 4xx or 3xx: no error by themselves (error_kinds.REFUSAL_KINDS)."""
        return {v: s | self.status_3xx[v] if v in self.status_3xx else s for v, s in self.status_4xx.items()}

    def __post_init__(self) -> None:
        self.segments = {k: v if isinstance(v, Coded) else Coded.from_values(v) for k, v in self.segments.items()}
        if self.prediction and not all(isinstance(v, Coded) for v in self.prediction.values()):
            self.prediction = Coded.joint(self.prediction)


def load_run_info(con: duckdb.DuckDBPyConnection, where: str = "results.duckdb") -> RunInfo:
    tables = {t for (t,) in con.execute("select table_name from information_schema.tables").fetchall()}
    missing = [t for t in ("runs", "requests", "legs") if t not in tables]
    if missing:  # a DuckDB file, but not one a run wrote (an empty one, another tool's)
        raise StoreError(f"{where}: no {missing[0]} table: not the results of a harness run")
    cur = con.execute("select * from runs limit 1")
    cols = [d[0] for d in cur.description]
    values = cur.fetchone()
    if values is None:
        raise StoreError(f"{where}: no run row (the run never started recording)")
    row = dict(zip(cols, values))
    config = json.loads(row["config"]) if row.get("config") else {}
    segments = tuple(json.loads(row["segments"])) if row.get("segments") else ()
    return RunInfo(run_id=row["id"], scenario=row["scenario"], status=row["status"], mode=row["mode"],
                   config=config, segments=segments, row=row)


_OPTIONAL = {"confidence": "confidence", "ttft": "time_to_first_token_ms", "itl": "inter_token_ms_mean",
             "completion_tokens": "completion_tokens", "service": "service_ms", **{d: d for d in DETECTOR_COLUMNS}}
_BATCH_ROWS = 1 << 20


def load_pairs(con: duckdb.DuckDBPyConnection, segments: tuple[str, ...], versions: tuple[str, ...]) -> PairData:
    """Analysable pairs, streamed out of DuckDB in Arrow batches so that no copy of the whole result is
    ever held: numbers go straight to numpy, labels to codes."""
    kinds = CONSUMER_ERROR_KINDS_SQL
    carried = _carried_columns(con)
    seg_cols = "".join(f', r."{s}"::varchar as "seg__{s}"' for s in segments)
    per_version = []
    for v in versions:
        a = v[0]
        cols = [f"{a}.latency_ms as {v}_latency",
                f"coalesce({a}.error_kind in ({kinds}), false) as {v}_error",
                f"coalesce({a}.error_kind = 'timeout', false) as {v}_timeout",
                f"({a}.schema_valid is not null) as {v}_schema_judged",
                f"coalesce({a}.schema_valid, false) as {v}_schema_valid",
                f"coalesce({a}.error_kind = 'http_4xx', false) as {v}_4xx",
                f"coalesce({a}.error_kind = 'http_3xx', false) as {v}_3xx",
                f"coalesce(s_{a}.score, 'nan'::double) as {v}_score",
                f"{a}.prediction::varchar as {v}_prediction"]
        for key, column in _OPTIONAL.items():
            if column not in carried:
                continue
            if key in DETECTOR_COLUMNS:
                cols += [f"coalesce({a}.{column}, false) as {v}_{key}", f"({a}.{column} is not null) as {v}_{key}_judged"]
            elif key == "ttft":
                # An answer that came in one piece (not streamed: a plain completion where the baseline
                # streamed) shows its first token with its end: its TTFT is its service time, not none.
                cols.append(f"""coalesce({a}.{column}::double, case when not coalesce({a}.streamed, false)
                                and {a}.error_kind is null then {a}.service_ms end, 'nan'::double) as {v}_{key}""")
            else:
                cols.append(f"coalesce({a}.{column}::double, 'nan'::double) as {v}_{key}")
        per_version.append(", ".join(cols))
    joins = "".join(f"""
        join legs {v[0]} on {v[0]}.request_id = r.request_id and {v[0]}.version = '{v}'
        left join (select request_id, avg(score) as score from scores where version = '{v}' group by 1) s_{v[0]}
               on s_{v[0]}.request_id = r.request_id""" for v in versions)
    # A pair with a leg harness could not carry out says nothing about either model (error_kinds).
    harness_ok = "".join(f" and {v[0]}.error_kind is distinct from '{HARNESS_ERROR}'" for v in versions)
    repeated = _inputs_repeat(con)
    unit_col = (", hash(coalesce(r.captured_request_id, '#' || r.seq::varchar)) as unit" if repeated else "")
    sql = f"""select r.order_idx {unit_col} {seg_cols}, {", ".join(per_version)}
              from requests r {joins}
              where not r.warmup {harness_ok}
              order by r.order_idx"""
    chunks: dict[str, list[np.ndarray]] = {}
    labels: dict[str, dict[str, int]] = {}  # label space -> label -> first-seen code
    spaces = {f"seg__{s}": f"seg__{s}" for s in segments} | {f"{v}_prediction": "prediction" for v in versions}
    reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
    for batch in reader:
        for name, column in zip(batch.schema.names, batch.columns):
            if name in spaces:
                chunks.setdefault(name, []).append(_codes(column, labels.setdefault(spaces[name], {})))
            else:
                chunks.setdefault(name, []).append(column.to_numpy(zero_copy_only=False))
    names = list(reader.schema.names)
    cols = {}
    for name in names:  # one column at a time, so at most one column is held twice
        parts = chunks.pop(name, [])
        cols[name] = np.concatenate(parts) if parts else np.empty(0, dtype=_empty_dtype(name, spaces))
        del parts
    n = len(cols["order_idx"])
    coded = {space: _sorted_codes(lbls) for space, lbls in labels.items()}

    def recode(name: str) -> Coded:  # first-seen codes -> codes of the sorted labels
        remap, ordered = coded.get(spaces[name], (np.empty(0, np.int32), ()))
        raw = cols.pop(name)
        if not ordered:
            return Coded(np.full(n, -1, np.int32), ())
        return Coded(np.where(raw >= 0, remap[np.maximum(raw, 0)], -1).astype(np.int32), ordered)

    unit = cols.pop("unit", None)
    out = PairData(order_idx=np.asarray(cols.pop("order_idx"), dtype=np.int64),
                   segments={s: recode(f"seg__{s}") for s in segments}, latency={}, error={}, timeout={},
                   schema_judged={}, schema_valid={}, status_4xx={}, score={}, n=n,
                   unit=None if unit is None else np.unique(unit, return_inverse=True)[1].astype(np.int64))
    nan = np.broadcast_to(np.float64("nan"), (n,))
    false = np.broadcast_to(np.False_, (n,))
    for v in versions:
        out.latency[v] = cols.pop(f"{v}_latency").astype(float, copy=False)
        out.error[v] = cols.pop(f"{v}_error").astype(bool, copy=False)
        out.timeout[v] = cols.pop(f"{v}_timeout").astype(bool, copy=False)
        out.schema_judged[v] = cols.pop(f"{v}_schema_judged").astype(bool, copy=False)
        out.schema_valid[v] = cols.pop(f"{v}_schema_valid").astype(bool, copy=False)
        out.status_4xx[v] = cols.pop(f"{v}_4xx").astype(bool, copy=False)
        out.status_3xx[v] = cols.pop(f"{v}_3xx").astype(bool, copy=False)
        out.score[v] = cols.pop(f"{v}_score").astype(float, copy=False)
        out.prediction[v] = recode(f"{v}_prediction")
        for key, target in (("confidence", out.confidence), ("ttft", out.ttft), ("itl", out.inter_token),
                            ("completion_tokens", out.completion_tokens), ("service", out.service)):
            col = cols.pop(f"{v}_{key}", None)
            target[v] = nan if col is None else col.astype(float, copy=False)
        for d in DETECTOR_COLUMNS:
            out.detected.setdefault(d, {})[v] = cols.pop(f"{v}_{d}", false)
            out.detector_judged.setdefault(d, {})[v] = cols.pop(f"{v}_{d}_judged", false)
    if len(versions) == 2:  # a 4xx or 3xx where the other version answered otherwise (error_kinds.pair_failed)
        x, y = versions
        for cls in (out.status_4xx, out.status_3xx):
            refused_x, refused_y = cls[x] & ~cls[y], cls[y] & ~cls[x]
            out.error[x], out.error[y] = out.error[x] | refused_x, out.error[y] | refused_y
    return out


def _inputs_repeat(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether some captured input is replayed more than once: a loop past the first, or records that share
    the capture's own request id (whose imported scores are one score copied to each)."""
    have = {c for (c,) in con.execute("select column_name from information_schema.columns "
                                        "where table_name = 'requests'").fetchall()}
    if not {"loop", "captured_request_id", "seq"} <= have:
        return False  # a run folder older than these columns: every pair its own input, as it was judged then
    row = con.execute("""select coalesce(max(loop), 0) > 0 or count(captured_request_id) >
                                  count(distinct captured_request_id)
                           from requests where not warmup""").fetchall()
    return bool(row and row[0][0])


def _carried_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The optional leg columns that at least one leg has a value in (one pass over the legs)."""
    names = sorted(set(_OPTIONAL.values()))
    row = con.execute(f"select {', '.join(f'count({c})' for c in names)} from legs").fetchall()[0]
    return {c for c, k in zip(names, row) if k}


def _codes(column: pa.Array, seen: dict[str, int]) -> np.ndarray:
    """A batch's labels as codes in first-seen order over all batches (-1 for null)."""
    encoded = pc.dictionary_encode(column)
    dictionary = encoded.dictionary.to_pylist()
    remap = np.fromiter((seen.setdefault(x, len(seen)) for x in dictionary), dtype=np.int32, count=len(dictionary))
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    if encoded.indices.null_count:
        valid = np.asarray(encoded.indices.is_valid())
        return np.where(valid, remap[np.where(valid, idx, 0).astype(np.int64)] if len(remap) else -1, -1).astype(np.int32)
    return remap[idx] if len(remap) else np.full(len(idx), -1, np.int32)


def _sorted_codes(seen: dict[str, int]) -> tuple[np.ndarray, tuple[str, ...]]:
    ordered = sorted(seen)
    remap = np.empty(len(seen), dtype=np.int32)
    for new, label in enumerate(ordered):
        remap[seen[label]] = new
    return remap, tuple(ordered)


def _empty_dtype(name: str, spaces: Mapping[str, str]) -> Any:
    return np.int32 if name in spaces else np.float64


def open_run(run_dir: Path) -> duckdb.DuckDBPyConnection:
    return open_results(run_dir / "results.duckdb", read_only=True)
