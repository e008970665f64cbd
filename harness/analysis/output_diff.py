"""Baseline against candidate, answer by answer: field diffs, labels and confidence drift.

Field diffs are computed by DuckDB from the legs' output_json excerpts (json_tree over both answers of
each pair, joined on the full path). A pair is compared when both answers are 2xx, neither leg is an
error, and both excerpts are JSON; the others are counted in `not_compared` as "error" or "not_json"
(an answer that is not JSON, or whose excerpt had to be cut at 2000 characters even after its long
strings were shortened to a prefix and digest). Per pair and field (array indices folded to `[*]`) a difference is
one of:
- missing: in the baseline's answer, not in the candidate's (reported at the top-most missing node);
- extra: in the candidate's answer only;
- type: both present, JSON types differ (integers and decimals are both `number`);
- value: both present, same scalar type, different value (numbers compared as numbers);
- order: an object with the same keys in another order, only under `output.key_order_paths`.
A field's diff_rate is the share of compared pairs where it differs. Diffy's noise rule decides what is
reported: with `aa_rate` the rate of the same field and kind in the A/A run named by
replay.aa_reference (0 where that run saw none, and 0 for all without a reference), a field is reported
only when diff_rate > aa_rate, (diff_rate - aa_rate) / (diff_rate + aa_rate) > 20 % (Diffy's relative
difference) and diff_rate - aa_rate > 0.03 % of the compared pairs (its absolute difference). Fields
under `output.ignore_paths` are listed but never reported.

Labels (the prediction column) and confidence drift (PSI, KS, mean shift) come from the same pairs'
extracted prediction and confidence columns.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np

from ..jsonpath import compile_path
from . import stats
from ..store import analysed_legs
from ..error_kinds import CONSUMER_ERROR_KINDS_SQL
from .dataset import Coded, PairData
from .overview import unpack

__all__ = ["OutputDiffConfig", "OutputComparison", "compare_outputs", "field_diffs", "label_summary",
           "confidence_drift", "aa_field_rates", "llm_overview", "path_steps", "covered_by", "RELATIVE_MARGIN", "ABSOLUTE_MARGIN"]

RELATIVE_MARGIN = 0.20  # Diffy's default relative threshold (20 %)
ABSOLUTE_MARGIN = 0.0003  # Diffy's default absolute threshold (0.03 % of the requests)
MAX_FIELDS_LISTED = 200
MAX_LABELS = 20
OTHER = "(other)"
_JTYPE = """case when {t} in ('UBIGINT', 'BIGINT', 'HUGEINT', 'DOUBLE', 'UHUGEINT') then 'number'
                 when {t} = 'VARCHAR' then 'string' else lower({t}) end"""


@dataclass(frozen=True)
class OutputDiffConfig:
    ignore_paths: tuple[str, ...] = ()
    key_order_paths: tuple[str, ...] = ()
    aa_rates: Mapping[tuple[str, str], float] | None = None  # (path, kind) -> A/A diff rate; None: no reference
    aa_pairs: int | None = None
    relative_margin: float = RELATIVE_MARGIN
    absolute_margin: float = ABSOLUTE_MARGIN


@dataclass
class FieldDiffs:
    pairs: int  # pairs with both legs
    compared: int
    not_compared: dict[str, int]
    fields: list[dict[str, Any]]  # every (path, kind) seen, reported first
    order_idx: np.ndarray  # compared pairs, ascending
    differs: np.ndarray  # per compared pair: a reported field differs


@dataclass
class OutputComparison:
    summary: dict[str, Any]
    field_diff: np.ndarray  # aligned to PairData.order_idx
    field_judged: np.ndarray
    all_fields: list[dict[str, Any]]


# ------------------------------------------------------------------------------------------ JSON paths

_DUCK_STEP = re.compile(r'\.(?:"((?:[^"\\]|\\.)*)"|([^.\[]+))|\[(\*|\d+)\]')


def path_steps(path: str) -> tuple[str | None, ...]:
    """Steps of a path as DuckDB's json_tree writes it (`$.a."b c"[*]`); None for an array element."""
    steps: list[str | None] = []
    pos = 1
    while pos < len(path):
        m = _DUCK_STEP.match(path, pos)
        if not m:
            break
        quoted, plain, index = m.groups()
        if index is not None:
            steps.append(None)
        else:
            steps.append(plain if plain is not None else re.sub(r"\\(.)", r"\1", quoted))
        pos = m.end()
    return tuple(steps)


def covered_by(path: str, patterns: Sequence[str]) -> bool:
    """Whether a json_tree path lies at or under one of the scenario's JSON paths (harness.jsonpath syntax;
    `[*]`, `.*` and any index match every element)."""
    steps = path_steps(path)
    for pattern in patterns:
        want = compile_path(pattern)
        if len(want) <= len(steps) and all(_step_matches(w, s) for w, s in zip(want, steps)):
            return True
    return False


def _step_matches(want: str | int | None, step: str | None) -> bool:
    if want is None:
        return True
    if isinstance(want, int):
        return step is None
    return want == step


# ------------------------------------------------------------------------------------------ fields

# array indices folded to [*]; the regular expression only runs on paths that have an index
_FOLD = "case when contains({k}, '[') then regexp_replace({k}, '\\[[0-9]+\\]', '[*]', 'g') else {k} end"
_CHUNK_PAIRS = 250_000  # pairs per json_tree pass: bounds DuckDB's working set at any run size


def _pairs_sql(kinds: str, where: str = "") -> str:
    return f"""
        select r.order_idx, b.output_json as bj, c.output_json as cj,
          (b.status_code between 200 and 299 and c.status_code between 200 and 299
           and coalesce(b.error_kind not in ({kinds}), true) and coalesce(c.error_kind not in ({kinds}), true)) as ok,
          coalesce(json_valid(b.output_json) and json_valid(c.output_json), false) as both_json
        from requests r
        join legs b on b.request_id = r.request_id and b.version = 'baseline'
        join legs c on c.request_id = r.request_id and c.version = 'candidate'
        where not r.warmup {where}"""


def field_diffs(con: duckdb.DuckDBPyConnection, cfg: OutputDiffConfig) -> FieldDiffs:
    """Counts per (path, kind) and, per compared pair, whether a reported field differs. The answers are
    walked in chunks of capture order, and only the differences are kept (as DuckDB rows, which spill to
    disk under the connection's memory limit), so memory does not grow with the run."""
    kinds = CONSUMER_ERROR_KINDS_SQL
    cur = con.cursor()
    try:
        # one pass over the pairs for the accounting and the compared pairs' order indexes
        status = cur.execute(f"select order_idx, coalesce(ok, false) as ok, both_json from ({_pairs_sql(kinds)}) "
                             "order by 1").fetchnumpy()
        ok_mask = np.asarray(status["ok"], dtype=bool)
        judged = np.asarray(status["order_idx"], dtype=np.int64)[ok_mask & np.asarray(status["both_json"], dtype=bool)]
        pairs, ok, compared = len(ok_mask), int(ok_mask.sum()), len(judged)
        del status, ok_mask
        not_compared = {"error": int(pairs - ok), "not_json": int(ok - compared)}
        cur.execute("create or replace temp table _od_diff (order_idx bigint, path varchar, kind varchar)")
        if compared:  # chunks of about _CHUNK_PAIRS compared pairs each, whatever the gaps in order_idx
            bounds = judged[::_CHUNK_PAIRS].tolist() + [int(judged[-1]) + 1]
            for lo, hi in zip(bounds, bounds[1:]):
                _diff_chunk(cur, kinds, lo, hi, bool(cfg.key_order_paths))
        rows = cur.execute("""select path, kind, count(distinct order_idx) as n from _od_diff
                              group by 1, 2 order by 3 desc, 1, 2""").fetchall()
        fields = _judge_fields(rows, int(compared), cfg)
        reported = [(f["path"], f["kind"]) for f in fields if f["reported"]]
        cur.execute("create or replace temp table _od_reported (path varchar, kind varchar)")
        if reported:
            cur.executemany("insert into _od_reported values (?, ?)", reported)
        differing = cur.execute("""select distinct d.order_idx from _od_diff d join _od_reported r using (path, kind)
                                   order by 1""").fetchnumpy()["order_idx"]
        for t in ("_od_diff", "_od_reported"):
            cur.execute(f"drop table if exists {t}")
    finally:
        cur.close()
    return FieldDiffs(pairs=int(pairs), compared=int(compared), not_compared=not_compared, fields=fields,
                      order_idx=judged, differs=np.isin(judged, np.asarray(differing, dtype=np.int64),
                                                        assume_unique=True))


def _diff_chunk(cur: duckdb.DuckDBPyConnection, kinds: str, lo: int, hi: int, key_order: bool) -> None:
    """The differences of the compared pairs with lo <= order_idx < hi, appended to _od_diff; key order
    is compared only when the scenario asks for it (output.key_order_paths)."""
    # json_tree's `path` is the parent's fullkey; a member of an object has a fullkey that does not end
    # in an array index (keys with brackets are quoted), so no self-join is needed for the parent.
    pairs = _pairs_sql(kinds, f"and r.order_idx >= {lo} and r.order_idx < {hi}")

    def nodes(column: str) -> str:
        return f"""
          select p.order_idx, j.fullkey, j.key, j.id, {_JTYPE.format(t='j.type')} as jtype, j.value::varchar as value,
                 case when j.parent is not null then j.path end as pkey,
                 case when j.parent is not null and not suffix(j.fullkey, ']') then 'object' end as ptype
          from p, json_tree(p.{column}) j where p.ok and p.both_json"""

    # A missing or extra node counts once, at the top: its parent must be in both answers, same type
    # (a container whose comparison found nothing: `same` below).
    cur.execute(f"""insert into _od_diff
        with p as materialized ({pairs}), b as ({nodes('bj')}), c as ({nodes('cj')}),
        d as materialized (
          select coalesce(b.order_idx, c.order_idx) as order_idx, coalesce(b.fullkey, c.fullkey) as fullkey,
                 coalesce(b.pkey, c.pkey) as pkey, b.jtype in ('object', 'array') as container,
                 case when c.fullkey is null then 'missing' when b.fullkey is null then 'extra'
                      when b.jtype <> c.jtype then 'type'
                      when b.jtype in ('object', 'array') then null
                      when b.jtype = 'number' and try_cast(b.value as double) = try_cast(c.value as double) then null
                      when b.jtype <> 'number' and b.value = c.value then null
                      else 'value' end as kind
          from b full outer join c on b.order_idx = c.order_idx and b.fullkey = c.fullkey),
        same as (select order_idx, fullkey from d where kind is null and container)
        select order_idx, {_FOLD.format(k='fullkey')} as path, kind from d
        where kind = 'type' or kind = 'value' or (kind in ('missing', 'extra') and pkey is null)
        union all
        select d.order_idx, {_FOLD.format(k='d.fullkey')} as path, d.kind
        from d join same s on s.order_idx = d.order_idx and s.fullkey = d.pkey
        where d.kind in ('missing', 'extra')""")
    if key_order:
        cur.execute(f"""insert into _od_diff
            with p as materialized ({pairs}), b as ({nodes('bj')}), c as ({nodes('cj')})
            select b.order_idx, {_FOLD.format(k='b.pkey')} as path, 'order' as kind
            from (select order_idx, pkey, list(key order by id) as keys from b where ptype = 'object' group by 1, 2) b
            join (select order_idx, pkey, list(key order by id) as keys from c where ptype = 'object' group by 1, 2) c
              using (order_idx, pkey)
            where b.keys <> c.keys and list_sort(b.keys) = list_sort(c.keys)""")


def _judge_fields(rows: list[tuple[str, str, int]], compared: int, cfg: OutputDiffConfig) -> list[dict[str, Any]]:
    out = []
    for path, kind, n in rows:
        if kind == "order" and not covered_by(path, cfg.key_order_paths):
            continue
        rate = n / compared if compared else 0.0
        aa = (cfg.aa_rates or {}).get((path, kind), 0.0) if cfg.aa_rates is not None else None
        noise = aa or 0.0
        ignored = covered_by(path, cfg.ignore_paths)
        beyond_noise = (rate > noise and (rate - noise) / (rate + noise) > cfg.relative_margin
                        and rate - noise > cfg.absolute_margin)
        out.append({"path": path, "kind": kind, "n": int(n), "diff_rate": rate, "aa_rate": aa,
                    "ignored": ignored, "reported": beyond_noise and not ignored})
    out.sort(key=lambda f: (not f["reported"], -f["diff_rate"], f["path"], f["kind"]))
    return out


# ------------------------------------------------------------------------------------------ labels

def label_summary(baseline: Coded | np.ndarray, candidate: Coded | np.ndarray,
                  segments: Mapping[str, Coded] | None = None) -> dict[str, Any] | None:
    """Labels seen by each version, the baseline-to-candidate confusion matrix (the most frequent labels,
    the rest as "(other)"), agreement, Cohen's kappa and flip rates, on pairs where both gave a label.
    Counted on label codes, so the cost is a few array passes at any run size."""
    if not isinstance(baseline, Coded) or not isinstance(candidate, Coded):
        coded = Coded.joint({"b": baseline, "c": candidate})
        baseline, candidate = coded["b"], coded["c"]
    labels = baseline.labels
    k = len(labels)
    b, c = baseline.codes, candidate.codes
    has_b, has_c = b >= 0, c >= 0
    if not has_b.any() and not has_c.any():
        return None
    both = has_b & has_c
    bb, cc = b[both], c[both]
    n = int(both.sum())
    seen_b, seen_c = np.bincount(b[has_b], minlength=k), np.bincount(c[has_c], minlength=k)
    by_count = lambda counts: {labels[i]: int(counts[i]) for i in sorted(np.flatnonzero(counts),  # noqa: E731
                                                                          key=lambda i: (-counts[i], labels[i]))}
    top = sorted(np.flatnonzero(seen_b + seen_c), key=lambda i: (-(seen_b + seen_c)[i], labels[i]))[:MAX_LABELS]
    cell = np.full(k + 1, k, dtype=np.int64)  # labels outside the top share the "(other)" cell k
    cell[top] = top
    pairs = np.bincount(cell[bb] * (k + 1) + cell[cc], minlength=(k + 1) ** 2)
    name = lambda i: labels[i] if i < k else OTHER  # noqa: E731
    confusion: dict[str, dict[str, int]] = {}
    for flat in np.flatnonzero(pairs):
        confusion.setdefault(name(flat // (k + 1)), {})[name(flat % (k + 1))] = int(pairs[flat])
    agree = bb == cc
    flip_rates = {}
    counts_bb = np.bincount(bb, minlength=k)
    for i in sorted(np.flatnonzero(counts_bb), key=lambda i: (-counts_bb[i], labels[i]))[:MAX_LABELS]:
        sel = bb == i
        flipped_to = cc[sel & ~agree]
        to = np.bincount(flipped_to, minlength=k) if len(flipped_to) else None
        flip_rates[labels[i]] = {"n": int(counts_bb[i]), "flipped": len(flipped_to),
                                 "rate": len(flipped_to) / int(counts_bb[i]),
                                 "mostly_to": labels[int(np.argmax(to))] if to is not None else None}
    p_e = float(np.dot(counts_bb, np.bincount(cc, minlength=k))) / (n * n) if n else 1.0
    kappa = (float(agree.mean()) - p_e) / (1 - p_e) if n and p_e < 1.0 else math.nan
    out: dict[str, Any] = {
        "n": n, "baseline_labels": by_count(seen_b), "candidate_labels": by_count(seen_c),
        "only_baseline": sorted(labels[i] for i in np.flatnonzero((seen_b > 0) & (seen_c == 0))),
        "only_candidate": sorted(labels[i] for i in np.flatnonzero((seen_c > 0) & (seen_b == 0))),
        "unlabelled": {"baseline": int((~has_b & has_c).sum()), "candidate": int((has_b & ~has_c).sum())},
        "confusion": confusion, "agreement": float(agree.mean()) if n else None,
        "kappa": _finite(kappa) if n else None,
        "flip_rate": float(1 - agree.mean()) if n else None, "flip_rates": flip_rates, "per_segment": [],
    }
    for seg_name, column in (segments or {}).items():
        codes = column.codes[both]
        for value in column.present(both):
            sel = codes == column.code(value)
            out["per_segment"].append({"segment": seg_name, "value": value, "n": int(sel.sum()),
                                       "agreement": float(agree[sel].mean()), "flip_rate": float(1 - agree[sel].mean())})
    return out


# ------------------------------------------------------------------------------------------ confidence

def _drift(b: np.ndarray, c: np.ndarray) -> dict[str, Any]:
    n = len(b)
    if n < 2:
        return {"n": n, "psi": None, "ks": None, "mean_shift": float(np.mean(c - b)) if n else None,
                "baseline_mean": float(b.mean()) if n else None, "candidate_mean": float(c.mean()) if n else None}
    return {"n": n, "psi": stats.psi(b, c), "ks": stats.ks_statistic(b, c), "mean_shift": float(np.mean(c - b)),
            "baseline_mean": float(b.mean()), "candidate_mean": float(c.mean())}


def confidence_drift(baseline: np.ndarray, candidate: np.ndarray, segments: Mapping[str, Coded] | None = None
                     ) -> dict[str, Any] | None:
    """PSI (candidate against the baseline's deciles), KS statistic and mean shift (candidate - baseline)
    on pairs where both gave a confidence, overall and per segment value."""
    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    ok = np.isfinite(b) & np.isfinite(c)
    if not ok.any():
        return None
    out = _drift(b[ok], c[ok])
    out["per_segment"] = []
    b, c = b[ok], c[ok]
    for name, column in (segments or {}).items():
        codes = column.codes[ok]
        for value in column.present(ok):
            sel = codes == column.code(value)
            out["per_segment"].append({"segment": name, "value": value, **_drift(b[sel], c[sel])})
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------ all of it

def compare_outputs(con: duckdb.DuckDBPyConnection, data: PairData, cfg: OutputDiffConfig) -> OutputComparison:
    """The summary's `outputs` block, and the per-pair field-diff flags (aligned to data.request_id) that
    the field_diff_rate gate judges."""
    n = data.n
    field_diff = np.zeros(n, dtype=bool)
    field_judged = np.zeros(n, dtype=bool)
    if "candidate" not in data.latency:
        return OutputComparison({"compared": 0, "fields": [], "labels": None, "confidence": None,
                                 "note": "baseline-only run: nothing to compare"}, field_diff, field_judged, [])
    fd = field_diffs(con, cfg)
    # both in capture order: place each compared pair at its row of PairData
    pos = np.searchsorted(data.order_idx, fd.order_idx)
    found = (pos < n) & (data.order_idx[np.minimum(pos, n - 1)] == fd.order_idx) if n else np.zeros(0, bool)
    field_judged[pos[found]] = True
    field_diff[pos[found]] = fd.differs[found]
    listed = fd.fields[:MAX_FIELDS_LISTED]
    summary: dict[str, Any] = {
        "pairs": fd.pairs, "compared": fd.compared, "not_compared": fd.not_compared,
        "noise_rule": {"relative_margin": cfg.relative_margin, "absolute_margin": cfg.absolute_margin,
                       "aa_reference": cfg.aa_rates is not None, "aa_pairs": cfg.aa_pairs},
        "ignore_paths": list(cfg.ignore_paths), "key_order_paths": list(cfg.key_order_paths),
        "fields": listed, "fields_not_listed": len(fd.fields) - len(listed),
        "field_diff_rate": float(fd.differs.mean()) if fd.compared else None,
        "labels": label_summary(data.prediction["baseline"], data.prediction["candidate"], data.segments),
        "confidence": confidence_drift(data.confidence["baseline"], data.confidence["candidate"], data.segments),
    }
    return OutputComparison(summary, field_diff, field_judged, fd.fields)


def aa_field_rates(comparison: OutputComparison) -> dict[str, Any]:
    """What an A/A run's summary carries for later paired runs: every field's A/A diff rate."""
    return {"pairs": comparison.summary.get("compared", 0),
            "fields": [{"path": f["path"], "kind": f["kind"], "rate": f["diff_rate"]} for f in comparison.all_fields]}


def llm_overview(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]] | None:
    """Per version: streaming, token timing, token counts and detector rates (rates over the answers each
    detector judged); None when no leg carries any of them (not a model that talks)."""
    cur = con.execute(f"""
        select l.version, count(*) as legs, count(*) filter (where streamed) as streamed,
          count(*) filter (where error_kind = 'truncated_stream') as truncated_streams,
          quantile_cont(time_to_first_token_ms, [0.5, 0.95]) as _ttft_q,
          avg(inter_token_ms_mean) as inter_token_ms_mean,
          quantile_cont(inter_token_ms_mean, 0.95) as inter_token_ms_p95,
          avg(prompt_tokens) as prompt_tokens_mean, avg(completion_tokens) as completion_tokens_mean,
          sum(completion_tokens) as completion_tokens,
          avg(abstained::int) as abstention_rate, count(abstained) as abstention_judged,
          avg(cited::int) as citation_rate, count(cited) as citation_judged,
          avg(fallback_model::int) as fallback_rate, count(fallback_model) as fallback_judged,
          avg(tool_calls_valid::int) as tool_call_validity_rate, count(tool_calls_valid) as tool_calls_judged,
          count(time_to_first_token_ms) + count(completion_tokens) + count(abstained) + count(cited)
            + count(fallback_model) + count(tool_calls_valid) as any_value
        from {analysed_legs()}
        group by 1 order by 1""")
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    for r in rows:
        unpack(r, "_ttft_q", ("ttft_p50_ms", "ttft_p95_ms"))
    if not any(r["any_value"] for r in rows):
        return None
    out = {}
    for r in rows:
        r.pop("any_value")
        version = r.pop("version")
        out[version] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}
    finish = con.execute("""select version, finish_reason, count(*) from legs where finish_reason is not null
                            group by 1, 2 order by 1, 3 desc""").fetchall()
    for version, reason, n in finish:
        out.setdefault(version, {}).setdefault("finish_reasons", {})[reason] = int(n)
    return out
