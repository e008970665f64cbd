"""An answer's per-row predictions: batched models answer N rows in one document.

- kserve_v2: output tensors of shape [N, K] (probabilities) or [N] (labels or scores), flat (row-major)
  or nested; a probability tensor and a label tensor may both be there;
- kserve_v1 / TF Serving / MLflow / plain JSON: a list at `$.predictions` (or `output.rows.path`) of
  labels, scores, probability vectors or objects ({"label": .., "score": ..}); TF Serving's columnar
  answer `{"outputs": ...}` too.

Each row gets a label, a score and, where it cannot be read, the reason it is invalid (non-numeric,
NaN, ragged, a probability vector that does not sum to about 1). Invalid rows keep their place, so row i
of the answer is always row i of the request; a wrong row count is judged by the caller against the
request, never aligned here.

Probability vectors: the score is the probability of `positive_class` (default: class 1 of two, else
the most probable class); the label is the class index, the argmax or, with `threshold`, the positive
class when its probability reaches the threshold. Plain scores get label "1"/"0" at the threshold
(default 0.5) when they lie in [0, 1]."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..jsonpath import MISSING, find_first
from ..numbers import number_label, number_of
from ..scenario import RowsConfig

if TYPE_CHECKING:
    from .json_protocol import OutputRead

__all__ = ["RowsRead", "read_rows", "row_check", "PROBABILITY_SUM_TOLERANCE"]

PROBABILITY_SUM_TOLERANCE = 0.01
_LABEL_NAMES = ("label", "labels", "prediction", "predictions", "predict", "class", "classes", "predicted_label")
_SCORE_NAMES = ("predict_proba", "probability", "probabilities", "proba", "probs", "confidence", "score", "scores")
_ROW_LABEL_KEYS = ("label", "class", "prediction", "predicted_label")
_ROW_SCORE_KEYS = ("score", "probability", "probabilities", "proba", "confidence")


@dataclass(frozen=True, slots=True)
class RowsRead:
    """count is None when the answer has no readable rows at all (then `error` says why)."""

    count: int | None
    labels: tuple[str | None, ...] = ()
    scores: tuple[float | None, ...] = ()
    invalid: tuple[str | None, ...] = ()
    error: str | None = None


def read_rows(protocol: str, doc: Any, cfg: RowsConfig) -> RowsRead:
    if protocol == "kserve_v2" and not (cfg.path or "").startswith("$"):
        return _v2_rows(doc, cfg)
    rows = _row_list(doc, cfg)
    if isinstance(rows, str):
        return RowsRead(None, error=rows)
    width = _common_width(rows)
    return _assemble([_row_value(r, cfg, width) for r in rows])


def _row_list(doc: Any, cfg: RowsConfig) -> list[Any] | str:
    if cfg.path:
        found = find_first(doc, cfg.path)
        if found is MISSING:
            return f"no rows at {cfg.path}"
    elif isinstance(doc, dict) and "predictions" in doc:
        found = doc["predictions"]
    elif isinstance(doc, dict) and "outputs" in doc:  # TF Serving's columnar answer
        found = doc["outputs"]
        if isinstance(found, dict):  # several named outputs: one list per name, rows across them
            lists = [v for v in found.values() if isinstance(v, list)]
            if not lists or len({len(v) for v in lists}) != 1:
                return "columnar outputs of different lengths"
            found = [dict(zip(found, values)) for values in zip(*lists)]
    elif isinstance(doc, list):
        found = doc
    else:
        return "no `predictions` in the answer"
    if not isinstance(found, list):
        return f"rows are not a list ({type(found).__name__})"
    return found


def _common_width(rows: list[Any]) -> int | None:
    """The length most probability vectors have (a ragged row is judged against it)."""
    widths = [len(r) for r in rows if isinstance(r, list)]
    return max(set(widths), key=widths.count) if widths else None


def _assemble(rows: list[tuple[str | None, float | None, str | None]]) -> RowsRead:
    return RowsRead(len(rows), tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


Row = tuple[str | None, float | None, str | None]  # label, score, invalid reason


def _row_value(v: Any, cfg: RowsConfig, width: int | None) -> Row:
    if isinstance(v, list):
        if width is not None and len(v) != width:
            return None, None, f"ragged: {len(v)} values where the other rows have {width}"
        return _probabilities(v, cfg)
    if isinstance(v, dict):
        return _row_object(v, cfg, width)
    if isinstance(v, bool):
        return ("1" if v else "0"), None, None
    if isinstance(v, int):
        return str(v), None, None
    if isinstance(v, float):
        return _score(v, cfg)
    if isinstance(v, str):
        return v, None, None
    return None, None, f"not a label or a score: {type(v).__name__}"


def _score(v: float, cfg: RowsConfig) -> Row:
    if not math.isfinite(v):
        return None, None, f"score is {v}"
    threshold = 0.5 if cfg.threshold is None else cfg.threshold
    label = ("1" if v >= threshold else "0") if 0.0 <= v <= 1.0 else None
    return label, v, None


def _probabilities(v: list[Any], cfg: RowsConfig) -> Row:
    if not v:
        return None, None, "empty probability vector"
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        return None, None, "non-numeric probability vector"
    p = [number_of(x) or 0.0 for x in v]
    if not all(math.isfinite(x) for x in p):
        return None, None, "NaN or infinite probability"
    if len(p) == 1:
        return _score(p[0], cfg)
    total = sum(p)
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE or min(p) < 0:
        return None, None, f"probabilities sum to {total:.4g}, not 1"
    argmax = max(range(len(p)), key=p.__getitem__)
    pos = cfg.positive_class if cfg.positive_class is not None else (1 if len(p) == 2 else None)
    if pos is not None and pos >= len(p):
        return None, None, f"positive_class {pos} beyond {len(p)} classes"
    if pos is None:
        return str(argmax), p[argmax], None
    if cfg.threshold is None:
        return str(argmax), p[pos], None
    if p[pos] >= cfg.threshold:
        return str(pos), p[pos], None
    rest = max((i for i in range(len(p)) if i != pos), key=p.__getitem__)
    return str(rest), p[pos], None


def _row_object(v: dict[str, Any], cfg: RowsConfig, width: int | None) -> Row:
    label_v = _pick(v, cfg.label, _ROW_LABEL_KEYS)
    score_v = _pick(v, cfg.score, _ROW_SCORE_KEYS)
    label: str | None = None
    score: float | None = None
    invalid: str | None = None
    if isinstance(score_v, list):
        label, score, invalid = _probabilities(score_v, cfg)
    elif isinstance(score_v, (int, float)) and not isinstance(score_v, bool):
        label, score, invalid = _score(number_of(score_v) or 0.0, cfg)
    elif score_v is not MISSING and score_v is not None:
        invalid = "non-numeric score"
    if label_v is not MISSING and label_v is not None:
        label = label_v if isinstance(label_v, str) else str(label_v)
    if label is None and score is None and invalid is None:
        invalid = "no label or score in the row object"
    return label, score, invalid


def _pick(v: dict[str, Any], key: str | None, defaults: tuple[str, ...]) -> Any:
    if key is not None:
        return find_first(v, key) if key.startswith("$") else v.get(key, MISSING)
    for k in defaults:
        if k in v:
            return v[k]
    return MISSING


# ------------------------------------------------------------------------------------------- KServe V2

def _v2_rows(doc: Any, cfg: RowsConfig) -> RowsRead:
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return RowsRead(None, error="no `outputs` in the answer")
    named = {str(o.get("name", "")): o for o in outputs if isinstance(o, dict)}
    score_t = _tensor_by(named, cfg.score or cfg.path, _SCORE_NAMES)
    label_t = _tensor_by(named, cfg.label, _LABEL_NAMES)
    if score_t is None and label_t is None:
        if cfg.path or cfg.score or cfg.label:
            return RowsRead(None, error=f"no output named {cfg.path or cfg.score or cfg.label!r}")
        score_t = next(iter(named.values()))  # a single unnamed-like output: read what it holds
    tensors = [t for t in (score_t, label_t) if t is not None]
    shaped: list[list[Any]] = []
    for t in tensors:
        rows = _v2_tensor_rows(t)
        if isinstance(rows, str):
            return RowsRead(None, error=f"output {t.get('name')!r}: {rows}")
        shaped.append(rows)
    if len({len(r) for r in shaped}) > 1:
        return RowsRead(None, error="outputs disagree on the number of rows: "
                        + ", ".join(f"{t.get('name')} {len(r)}" for t, r in zip(tensors, shaped)))
    width = _common_width(shaped[0])
    out = [_row_value(r, cfg, width) for r in shaped[0]]
    if score_t is not None and label_t is not None:  # the label tensor names the label; scores stay
        out = [(_as_label(lbl), s, bad) for (_, s, bad), lbl in zip(out, shaped[1])]
    return _assemble(out)


def _as_label(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return number_label(v)
    return v if isinstance(v, str) else str(v)


def _tensor_by(named: dict[str, Any], wanted: str | None, defaults: tuple[str, ...]) -> dict[str, Any] | None:
    if wanted is not None:
        return named.get(wanted)
    lower = {k.lower(): v for k, v in named.items()}
    for k in defaults:
        if k in lower:
            return lower[k]
    return None


def _v2_tensor_rows(t: dict[str, Any]) -> list[Any] | str:
    """A tensor's rows along its first dimension: [N] -> N values, [N, K] -> N lists of K."""
    shape, data = t.get("shape"), t.get("data")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not isinstance(data, list):
        return "data is not a list"
    flat = _flatten(data)
    if isinstance(flat, str):
        return flat
    n = shape[0]
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    if len(flat) != n * per_row:
        return f"ragged: {len(flat)} values for shape {shape}"
    if len(shape) == 1:
        return flat
    return [flat[i * per_row:(i + 1) * per_row] for i in range(n)]


def _flatten(data: list[Any]) -> list[Any] | str:
    out: list[Any] = []
    for x in data:
        if isinstance(x, list):
            inner = _flatten(x)
            if isinstance(inner, str):
                return inner
            out.extend(inner)
        else:
            out.append(x)
    return out


def row_check(asked: int | None, out: "OutputRead", kind: str | None, detail: str | None
               ) -> tuple[str | None, str | None]:
    """A 2xx batch answer must carry one row per requested row: more or fewer is an error of its own kind
    (the rows are kept as answered, never aligned)."""
    if kind is not None or asked is None:
        return kind, detail
    if out.row_count is None:
        return "row_count_mismatch", f"{asked} rows asked for, none readable in the answer: {out.row_error}"
    if out.row_count != asked:
        return "row_count_mismatch", f"{asked} rows asked for, {out.row_count} answered"
    return kind, detail
