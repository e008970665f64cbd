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
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np

from ..jsonpath import compile_path
from . import stats
from .dataset import ERROR_KINDS_COUNTED, PairData

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
    request_ids: np.ndarray  # compared pairs
    differs: np.ndarray  # per compared pair: a reported field differs


@dataclass
class OutputComparison:
    summary: dict[str, Any]
    field_diff: np.ndarray  # aligned to PairData.request_id
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

def _pairs_sql(kinds: str) -> str:
    return f"""
        select r.request_id, b.output_json as bj, c.output_json as cj,
          (b.status_code between 200 and 299 and c.status_code between 200 and 299
           and coalesce(b.error_kind not in ({kinds}), true) and coalesce(c.error_kind not in ({kinds}), true)) as ok,
          coalesce(json_valid(b.output_json) and json_valid(c.output_json), false) as both_json
        from requests r
        join legs b on b.request_id = r.request_id and b.version = 'baseline'
        join legs c on c.request_id = r.request_id and c.version = 'candidate'
        where not r.warmup"""


def field_diffs(con: duckdb.DuckDBPyConnection, cfg: OutputDiffConfig) -> FieldDiffs:
    kinds = ", ".join(f"'{k}'" for k in ERROR_KINDS_COUNTED)
    cur = con.cursor()
    try:
        cur.execute(f"create or replace temp table _od_pairs as {_pairs_sql(kinds)}")
        pairs, ok, compared = cur.execute(
            "select count(*), count(*) filter (where ok), count(*) filter (where ok and both_json) from _od_pairs"
        ).fetchone()  # type: ignore[misc]
        not_compared = {"error": int(pairs - ok), "not_json": int(ok - compared)}
        cur.execute(f"""create or replace temp table _od_nodes as
            with t as (
              select p.request_id, 'b' as side, j.* from _od_pairs p, json_tree(p.bj) j where p.ok and p.both_json
              union all
              select p.request_id, 'c' as side, j.* from _od_pairs p, json_tree(p.cj) j where p.ok and p.both_json)
            select t.request_id, t.side, t.fullkey, t.key, t.id, {_JTYPE.format(t='t.type')} as jtype,
                   t.value::varchar as value, pt.fullkey as pkey, {_JTYPE.format(t='pt.type')} as ptype
            from t left join t pt on pt.request_id = t.request_id and pt.side = t.side and pt.id = t.parent""")
        cur.execute("""create or replace temp table _od_cmp as
            with b as (select * from _od_nodes where side = 'b'), c as (select * from _od_nodes where side = 'c')
            select coalesce(b.request_id, c.request_id) as request_id, coalesce(b.fullkey, c.fullkey) as fullkey,
                   coalesce(b.pkey, c.pkey) as pkey,
                   case when c.fullkey is null then 'missing' when b.fullkey is null then 'extra'
                        when b.jtype <> c.jtype then 'type'
                        when b.jtype in ('object', 'array') then null
                        when b.jtype = 'number' and try_cast(b.value as double) = try_cast(c.value as double) then null
                        when b.jtype <> 'number' and b.value = c.value then null
                        else 'value' end as kind
            from b full outer join c on b.request_id = c.request_id and b.fullkey = c.fullkey""")
        # A missing or extra node counts once, at the top: its parent must be in both answers, same type.
        cur.execute("""create or replace temp table _od_diff as
            select d.request_id, regexp_replace(d.fullkey, '\\[[0-9]+\\]', '[*]', 'g') as path, d.kind
            from _od_cmp d
            left join _od_cmp p on p.request_id = d.request_id and p.fullkey = d.pkey
            where d.kind is not null and (d.kind not in ('missing', 'extra') or d.pkey is null
                                          or (p.fullkey is not null and p.kind is null))
            union all
            select b.request_id, regexp_replace(b.pkey, '\\[[0-9]+\\]', '[*]', 'g') as path, 'order' as kind
            from (select request_id, pkey, list(key order by id) as keys from _od_nodes
                  where side = 'b' and ptype = 'object' group by 1, 2) b
            join (select request_id, pkey, list(key order by id) as keys from _od_nodes
                  where side = 'c' and ptype = 'object' group by 1, 2) c using (request_id, pkey)
            where b.keys <> c.keys and list_sort(b.keys) = list_sort(c.keys)""")
        rows = cur.execute("""select path, kind, count(distinct request_id) as n from _od_diff
                              group by 1, 2 order by 3 desc, 1, 2""").fetchall()
        fields = _judge_fields(rows, int(compared), cfg)
        reported = [(f["path"], f["kind"]) for f in fields if f["reported"]]
        cur.execute("create or replace temp table _od_reported (path varchar, kind varchar)")
        if reported:
            cur.executemany("insert into _od_reported values (?, ?)", reported)
        got = cur.execute("""
            select p.request_id, exists (select 1 from _od_diff d join _od_reported r using (path, kind)
                                         where d.request_id = p.request_id) as differs
            from _od_pairs p where p.ok and p.both_json""").fetchnumpy()
        for t in ("_od_pairs", "_od_nodes", "_od_cmp", "_od_diff", "_od_reported"):
            cur.execute(f"drop table if exists {t}")
    finally:
        cur.close()
    return FieldDiffs(pairs=int(pairs), compared=int(compared), not_compared=not_compared, fields=fields,
                      request_ids=np.asarray(got["request_id"], dtype=object),
                      differs=np.asarray(got["differs"], dtype=bool))


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

def _label_codes(values: np.ndarray, keep: set[str]) -> list[str]:
    return [v if v in keep else OTHER for v in values]


def label_summary(baseline: np.ndarray, candidate: np.ndarray, segments: Mapping[str, np.ndarray] | None = None
                  ) -> dict[str, Any] | None:
    """Labels seen by each version, the baseline-to-candidate confusion matrix (the most frequent labels,
    the rest as "(other)"), agreement, Cohen's kappa and flip rates, on pairs where both gave a label."""
    b = np.asarray(baseline, dtype=object)
    c = np.asarray(candidate, dtype=object)
    has_b = np.array([x is not None for x in b], dtype=bool)
    has_c = np.array([x is not None for x in c], dtype=bool)
    if not has_b.any() and not has_c.any():
        return None
    both = has_b & has_c
    bb, cc = b[both].astype(str), c[both].astype(str)
    n = int(both.sum())
    seen_b, seen_c = Counter(b[has_b].astype(str).tolist()), Counter(c[has_c].astype(str).tolist())
    top = {lbl for lbl, _ in (seen_b + seen_c).most_common(MAX_LABELS)}
    confusion: dict[str, dict[str, int]] = {}
    for x, y in zip(_label_codes(bb, top), _label_codes(cc, top)):
        confusion.setdefault(x, {}).setdefault(y, 0)
        confusion[x][y] += 1
    agree = bb == cc
    flip_rates = {}
    for lbl, count in Counter(bb.tolist()).most_common(MAX_LABELS):
        sel = bb == lbl
        flipped = int((~agree[sel]).sum())
        to = Counter(cc[sel & ~agree].tolist()).most_common(1)
        flip_rates[lbl] = {"n": int(count), "flipped": flipped, "rate": flipped / count,
                           "mostly_to": to[0][0] if to else None}
    out: dict[str, Any] = {
        "n": n, "baseline_labels": dict(seen_b.most_common()), "candidate_labels": dict(seen_c.most_common()),
        "only_baseline": sorted(set(seen_b) - set(seen_c)), "only_candidate": sorted(set(seen_c) - set(seen_b)),
        "unlabelled": {"baseline": int((~has_b & has_c).sum()), "candidate": int((has_b & ~has_c).sum())},
        "confusion": confusion, "agreement": float(agree.mean()) if n else None,
        "kappa": _finite(stats.cohen_kappa(bb, cc)) if n else None,
        "flip_rate": float(1 - agree.mean()) if n else None, "flip_rates": flip_rates, "per_segment": [],
    }
    for name, column in (segments or {}).items():
        col = np.asarray(column)[both]
        for value in sorted(set(col.tolist())):
            sel = col == value
            out["per_segment"].append({"segment": name, "value": value, "n": int(sel.sum()),
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


def confidence_drift(baseline: np.ndarray, candidate: np.ndarray, segments: Mapping[str, np.ndarray] | None = None
                     ) -> dict[str, Any] | None:
    """PSI (candidate against the baseline's deciles), KS statistic and mean shift (candidate - baseline)
    on pairs where both gave a confidence, overall and per segment value."""
    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    ok = np.isfinite(b) & np.isfinite(c)
    if not ok.any():
        return None
    out = _drift(b[ok], c[ok])
    out["per_segment"] = []
    for name, column in (segments or {}).items():
        col = np.asarray(column)[ok]
        for value in sorted(set(col.tolist())):
            sel = col == value
            out["per_segment"].append({"segment": name, "value": value, **_drift(b[ok][sel], c[ok][sel])})
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
    index = {rid: i for i, rid in enumerate(data.request_id.tolist())}
    for rid, differs in zip(fd.request_ids.tolist(), fd.differs.tolist()):
        i = index.get(rid)
        if i is not None:
            field_judged[i] = True
            field_diff[i] = differs
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
    cur = con.execute("""
        select l.version, count(*) as legs, count(*) filter (where streamed) as streamed,
          count(*) filter (where error_kind = 'truncated_stream') as truncated_streams,
          quantile_cont(time_to_first_token_ms, 0.5) as ttft_p50_ms,
          quantile_cont(time_to_first_token_ms, 0.95) as ttft_p95_ms,
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
        from legs l join requests r using (request_id) where not r.warmup
        group by 1 order by 1""")
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
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
