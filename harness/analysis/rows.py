"""Row-level comparison of batched predictions: which rows changed their label, how far scores moved.

Rows come from the `row_pairs` view (harness.store): one row per request row, baseline beside candidate.
A row is judged only when both legs answered without error (a leg whose row count did not match the
request is an error, `row_count_mismatch`, and its rows are not aligned to anything). Invalid rows (NaN,
non-numeric, ragged, probabilities not summing to 1) are counted and left out of the score metrics; a
row is label-judged when both versions gave it a label.

Every interval and test treats the request as the unit (harness.analysis.clustered): rates by Korn &
Graubard's effective-sample-size interval, the rest by a bootstrap over requests. Metrics:
row_flip_rate, row_agreement, row_invalid_rate (the candidate's), row_score_change (mean or p99 of
|candidate - baseline|), row_score_psi, row_score_ks. Per batch-size bucket through the request-level
segment `batch_size` (BATCH_BUCKETS) that the judge adds when rows were read."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow.compute as pc
from numpy.typing import NDArray

from . import stats
from .clustered import cluster_weights, clustered_rate
from .dataset import Coded, PairData, _codes, _sorted_codes

__all__ = ["RowData", "load_rows", "row_gate", "rows_summary", "batch_size_buckets", "batch_size_segment",
           "size_row_rate", "BATCH_BUCKETS", "ROW_MIN_REQUESTS"]

BATCH_BUCKETS = ((1, 1), (2, 8), (9, 32), (33, 128), (129, None))
ROW_MIN_REQUESTS = 10  # fewer requests than this: no interval on rows is trusted (the variance is a guess)
_DISTRIBUTION_MIN_ROWS = 30
_DISTRIBUTION_RESAMPLES = 400


@dataclass
class RowData:
    """Judged rows, grouped by request. `request_pos` is the row's request's position in PairData."""

    request_pos: NDArray[np.intp]
    order_idx: NDArray[np.int64]
    row_idx: NDArray[np.int64]
    batch_size: NDArray[np.float64]
    label: dict[str, Coded]  # one label set for both versions; -1 where none
    score: dict[str, NDArray[np.float64]]  # NaN where none or invalid
    invalid: dict[str, NDArray[np.bool_]]

    @property
    def n(self) -> int:
        return len(self.order_idx)


def load_rows(con: duckdb.DuckDBPyConnection, pairs: PairData) -> RowData | None:
    """The analysable pairs' rows where both legs answered without an error; None when no leg has rows."""
    # fetchall, not fetchone: a result left unfinished blocks the connection's next query
    has = con.execute("select count(*) from information_schema.tables where table_name = 'row_pairs'").fetchall()
    if not has[0][0] or not con.execute("select count(*) from legs where row_labels is not null").fetchall()[0][0]:
        return None
    # Arrow straight to numpy and label codes: a run's rows are many times its requests.
    table = con.sql("""select order_idx, row_idx, batch_size::double as batch_size, baseline_label,
                                  candidate_label, baseline_score, candidate_score,
                                  baseline_invalid_reason is not null as baseline_invalid,
                                  candidate_invalid_reason is not null as candidate_invalid
                           from row_pairs
                           where not warmup and baseline_error_kind is null and candidate_error_kind is null
                             and row_idx is not null
                           order by order_idx, row_idx""").to_arrow_table()

    def col(name: str, fill: Any) -> NDArray[Any]:
        return np.asarray(pc.fill_null(table[name], fill).to_numpy())

    order_idx = col("order_idx", -1).astype(np.int64)
    pos = np.searchsorted(pairs.order_idx, order_idx)
    n_pairs = len(pairs.order_idx)
    found = (pos < n_pairs) & (pairs.order_idx[np.minimum(pos, max(n_pairs - 1, 0))] == order_idx) if n_pairs \
        else np.zeros(len(order_idx), bool)
    keep = np.flatnonzero(found)
    seen: dict[str, int] = {}
    raw = {v: _codes(table[f"{v}_label"].combine_chunks(), seen)[keep] for v in ("baseline", "candidate")}
    remap, ordered = _sorted_codes(seen)
    labels = {v: Coded(np.where(r >= 0, remap[np.maximum(r, 0)] if len(remap) else -1, -1).astype(np.int32), ordered)
              for v, r in raw.items()}
    invalid = {v: col(f"{v}_invalid", False).astype(bool)[keep] for v in ("baseline", "candidate")}
    score = {v: col(f"{v}_score", math.nan).astype(np.float64)[keep] for v in ("baseline", "candidate")}
    for v in score:
        score[v][invalid[v]] = math.nan
    return RowData(request_pos=pos[keep].astype(np.intp), order_idx=order_idx[keep],
                   row_idx=col("row_idx", -1).astype(np.int64)[keep],
                   batch_size=col("batch_size", math.nan).astype(np.float64)[keep], label=labels, score=score,
                   invalid=invalid)


def batch_size_buckets(batch_size: NDArray[np.float64]) -> list[str | None]:
    """Bucket labels of request batch sizes (None where unknown): 1, 2-8, 9-32, 33-128, 129+."""
    out: list[str | None] = []
    for b in batch_size:
        if not math.isfinite(b):
            out.append(None)
            continue
        for lo, hi in BATCH_BUCKETS:
            if b >= lo and (hi is None or b <= hi):
                out.append(str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}")
                break
        else:
            out.append(None)  # 0 rows
    return out


def batch_size_segment(con: duckdb.DuckDBPyConnection, pairs: PairData) -> Coded:
    """The `batch_size` segment: each analysed request's batch-size bucket (no label where unknown)."""
    got = dict(con.execute("select order_idx, batch_size from requests where batch_size is not null").fetchall())
    sizes = np.array([got.get(int(o), math.nan) for o in pairs.order_idx], dtype=np.float64)
    return Coded.from_values(batch_size_buckets(sizes))


# ------------------------------------------------------------------------------------------------ gates

_TEXT = {"row_flip_rate": "row label flip rate", "row_agreement": "row label agreement",
         "row_invalid_rate": "candidate invalid-row rate", "row_score_change": "row score change",
         "row_score_psi": "row score PSI", "row_score_ks": "row score KS"}


def row_gate(spec: Any, rows: RowData | None, mask: NDArray[np.bool_], label: str | None, alpha: float,
             n_resamples: int, seed: int) -> dict[str, Any]:
    """A row gate's result fields (GateResult's, less those of the spec) for the requests in `mask`."""
    where = f" in {label}" if label else " overall"
    what = _TEXT[spec.metric]
    if rows is None or rows.n == 0:
        return _none(f"No rows to compare{where}: the answers were not read row by row (output.rows).")
    sel = mask[rows.request_pos]
    if spec.metric in ("row_flip_rate", "row_agreement", "row_invalid_rate"):
        return _row_rate(spec, rows, sel, where, what, alpha)
    return _row_distribution(spec, rows, sel, where, what, alpha, n_resamples, seed)


def _none(reason: str, n: int = 0) -> dict[str, Any]:
    return {"baseline": None, "candidate": None, "observed": None, "ci": None, "n": n, "status": "inconclusive",
            "reason": reason}


def _row_rate(spec: Any, rows: RowData, sel: NDArray[np.bool_], where: str, what: str, alpha: float
              ) -> dict[str, Any]:
    if spec.metric == "row_invalid_rate":
        judged = sel.copy()
        event = rows.invalid["candidate"] & sel
    else:
        b, c = rows.label["baseline"].codes, rows.label["candidate"].codes
        judged = sel & (b >= 0) & (c >= 0)
        agree = judged & (b == c)
        event = agree if spec.metric == "row_agreement" else judged & ~agree
    n_rows = int(judged.sum())
    requests = np.unique(rows.order_idx[judged])
    if n_rows == 0:
        return _none(f"No judged rows{where} for the {what}.")
    if len(requests) < ROW_MIN_REQUESTS:
        return {**_none(f"{what.capitalize()}{where}: {n_rows} rows in only {len(requests)} requests; at least "
                        f"{ROW_MIN_REQUESTS} requests are needed (rows of one request are not independent).",
                        n_rows), "min_n": ROW_MIN_REQUESTS}
    cluster = np.searchsorted(requests, rows.order_idx[judged])
    k_j = np.bincount(cluster, weights=event[judged], minlength=len(requests))
    n_j = np.bincount(cluster, minlength=len(requests))
    r = clustered_rate(k_j, n_j, confidence=1 - alpha, one_sided=True)
    thr = spec.threshold
    if spec.direction == "max":
        status = "pass" if r.upper <= thr else "fail" if r.lower > thr else "inconclusive"
        p, effect = r.p_above(thr), r.estimate - thr
    else:
        status = "pass" if r.lower >= thr else "fail" if r.upper < thr else "inconclusive"
        p, effect = r.p_below(thr), thr - r.estimate
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    verdict = {"pass": "within the limit", "fail": "beyond the limit",
               "inconclusive": "the interval straddles the limit"}[status]
    return {"baseline": None, "candidate": r.estimate, "observed": r.estimate, "ci": (r.lower, r.upper), "n": n_rows,
            "status": status, "p_value": p, "effect": effect, "min_n": ROW_MIN_REQUESTS,
            "reason": (f"{what.capitalize()}{where} {pct(r.estimate)} ({r.events}/{n_rows} rows in {r.clusters} "
                       f"requests; {100 * (1 - alpha):g} % bounds {pct(r.lower)}-{pct(r.upper)}, clustered by "
                       f"request: design effect {r.design_effect:.2f}) vs {spec.threshold_text}: {verdict}.")}


def _row_distribution(spec: Any, rows: RowData, sel: NDArray[np.bool_], where: str, what: str, alpha: float,
                      n_resamples: int, seed: int) -> dict[str, Any]:
    b, c = rows.score["baseline"], rows.score["candidate"]
    ok = sel & np.isfinite(b) & np.isfinite(c)
    idx = np.flatnonzero(ok)
    n_rows, n_req = len(idx), len(np.unique(rows.order_idx[idx]))
    if n_rows < _DISTRIBUTION_MIN_ROWS or n_req < ROW_MIN_REQUESTS:
        return {**_none(f"{what.capitalize()}{where}: {n_rows} scored rows in {n_req} requests; at least "
                        f"{_DISTRIBUTION_MIN_ROWS} rows in {ROW_MIN_REQUESTS} requests are needed.", n_rows),
                "min_n": _DISTRIBUTION_MIN_ROWS}
    bs, cs = b[idx], c[idx]
    requests, cluster = np.unique(rows.order_idx[idx], return_inverse=True)
    value, draws = _bootstrap_over_requests(spec.metric, spec.aggregation, bs, cs, cluster, len(requests),
                                            min(n_resamples, _DISTRIBUTION_RESAMPLES), seed)
    m, agg = spec.metric, spec.aggregation
    draws = draws[np.isfinite(draws)]
    lo, hi = float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))
    lo, hi = min(lo, value), max(hi, value)
    thr = spec.threshold
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
        p = float(np.mean(draws <= thr)) if len(draws) else 1.0
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
        p = float(np.mean(draws >= thr)) if len(draws) else 1.0
    name = f"{agg} {what}" if m == "row_score_change" else what
    return {"baseline": float(np.mean(bs)), "candidate": float(np.mean(cs)), "observed": value, "ci": (lo, hi),
            "n": n_rows, "status": status, "p_value": max(p, 1.0 / (len(draws) + 1)), "effect": value - thr,
            "min_n": _DISTRIBUTION_MIN_ROWS,
            "reason": (f"{name.capitalize()}{where} {value:.4g} ({n_rows} rows in {n_req} requests; "
                       f"{100 * (1 - alpha):g} % bounds {lo:.4g}-{hi:.4g} by a bootstrap over requests) vs "
                       f"{spec.threshold_text}: {status}.")}


def _bootstrap_over_requests(metric: str, aggregation: str, bs: NDArray[np.float64], cs: NDArray[np.float64],
                             cluster: NDArray[np.intp], n_clusters: int, n_resamples: int, seed: int
                             ) -> tuple[float, NDArray[np.float64]]:
    """The statistic on all rows and over resamples of requests, each resample as request weights
    (clustered.cluster_weights) applied to per-request totals: sums for the mean, bin counts for PSI and
    KS (the bins of the whole sample held fixed; KS on a grid of 256 pooled quantiles) and for the p99 (1,024
    bins of the top 10 % of changes, each resample's p99 read to its bin's upper edge)."""
    draws: list[NDArray[np.float64]] = []
    if metric == "row_score_change":
        d = np.abs(cs - bs)
        if aggregation == "mean":
            sums, counts = np.bincount(cluster, d, n_clusters), np.bincount(cluster, minlength=n_clusters)
            for w in cluster_weights(n_clusters, n_resamples, seed):
                draws.append((w @ sums) / (w @ counts))
            return float(np.mean(d)), np.concatenate(draws)
        # a resample's p99 lies in the top tail: 1,024 bins above the whole sample's p90 place it to 0.01 %
        edges = np.unique(np.quantile(d, np.linspace(0.9, 1.0, 1025)))
        k = len(edges) + 1
        tail = np.bincount(cluster * k + np.searchsorted(edges, d, side="left"),
                           minlength=n_clusters * k).reshape(n_clusters, k)
        upper = np.append(edges, edges[-1])
        for w in cluster_weights(n_clusters, n_resamples, seed, width=max(n_clusters, k)):
            cum = np.cumsum(w @ tail, axis=1)
            draws.append(upper[np.argmax(cum >= 0.99 * cum[:, -1:], axis=1)])
        return float(np.quantile(d, 0.99)), np.concatenate(draws)
    if metric == "row_score_psi":
        edges, k = stats._psi_edges(bs, 10)
        value = stats.psi(bs, cs)
        binned = (stats._psi_bin(edges, bs), stats._psi_bin(edges, cs))
    else:
        grid = np.unique(np.quantile(np.concatenate([bs, cs]), np.linspace(0, 1, 257)))
        k = len(grid) + 1
        value = stats.ks_statistic(bs, cs)
        binned = (np.searchsorted(grid, bs, side="left"), np.searchsorted(grid, cs, side="left"))
    per_request = [np.bincount(cluster * k + x, minlength=n_clusters * k).reshape(n_clusters, k) for x in binned]
    for w in cluster_weights(n_clusters, n_resamples, seed, width=max(n_clusters, k)):
        cb, cc = w @ per_request[0], w @ per_request[1]
        if metric == "row_score_psi":
            draws.append(stats._psi_from_counts(cb, cc))
        else:
            fb = np.cumsum(cb, axis=1) / cb.sum(axis=1, keepdims=True)
            fc = np.cumsum(cc, axis=1) / cc.sum(axis=1, keepdims=True)
            draws.append(np.max(np.abs(fb - fc), axis=1))
    return value, np.concatenate(draws)


# ----------------------------------------------------------------------------------------------- sizing

def size_row_rate(spec: Any, result: dict[str, Any] | None, con: duckdb.DuckDBPyConnection, where: str,
                  params: list[Any], alpha: float, power: float) -> dict[str, Any]:
    """Requests a canary step needs to judge a row rate gate: the one-sided bound's n in rows
    (stats.n_one_proportion_bound at this run's rate), times this run's design effect (rows of a request
    are correlated: each carries less than a row's worth of information), over this run's mean rows per
    request. `where` / `params` select requests (alias r), as the schedule's scope filter."""
    name = spec.metric
    event = {"row_flip_rate": "flipped", "row_agreement": "not flipped",
             "row_invalid_rate": "candidate_invalid_reason is not null"}[name]
    judged = "flipped is not null" if name != "row_invalid_rate" else "true"
    per_request = con.execute(f"""
        select count(*) filter (where {event}) as k, count(*) as n from row_pairs r
        where not r.warmup and baseline_error_kind is null and candidate_error_kind is null and {judged} {where}
        group by order_idx""", params).fetchall()
    if len(per_request) < ROW_MIN_REQUESTS:
        return {"basis": f"{spec.name}: rows of {len(per_request)} requests in this run: too few to size"}
    k_j = np.array([k for k, _ in per_request], dtype=np.float64)
    n_j = np.array([n for _, n in per_request], dtype=np.float64)
    r = clustered_rate(k_j, n_j, confidence=1 - alpha)
    bad_rate, limit = (1 - r.estimate, 1 - spec.threshold) if name == "row_agreement" else (r.estimate, spec.threshold)
    if spec.direction == ("max" if name == "row_agreement" else "min"):
        return {"basis": f"{spec.name}: a {spec.condition_key} limit on {name} is not sized"}
    if bad_rate >= limit:
        return {"basis": f"{spec.name}: this run's rate {bad_rate:.4g} is already at or beyond {limit:g}: no number "
                         "of requests can show the candidate within it"}
    rows_n = stats.n_one_proportion_bound(bad_rate, limit, alpha, power)
    rows_needed = math.ceil(rows_n * r.design_effect)
    mean_rows = float(n_j.mean())
    requests = max(math.ceil(rows_needed / mean_rows), ROW_MIN_REQUESTS)  # the gate judges no fewer
    return {"test": "one-sided clustered bound on the row rate vs the absolute limit", "n": rows_needed,
            "n_formula": rows_n, "shadow_paired_n": requests, "requests": requests,
            "basis": (f"n_one_proportion_bound(p_true = {bad_rate:.4g}, limit {limit:g}, alpha {alpha:g}, power "
                      f"{power:g}) = {rows_n} rows x design effect {r.design_effect:.2f} = {rows_needed} rows / "
                      f"{mean_rows:.1f} rows per request = {requests} requests (at least {ROW_MIN_REQUESTS})")}


# ---------------------------------------------------------------------------------------------- summary

def rows_summary(con: duckdb.DuckDBPyConnection, rows: RowData | None, pairs: PairData, alpha: float = 0.05,
                 examples: int = 5) -> dict[str, Any] | None:
    """summary["rows"]: counts, the row-level confusion matrix, flips per segment ranked (clustered
    intervals) and a few flipped rows (request id, row, labels, scores: no payload)."""
    if rows is None:
        return None
    counts = dict(zip(("legs_with_rows", "mismatched_legs", "rows_baseline", "rows_candidate"), con.execute("""
        select count(*) filter (where row_labels is not null), count(*) filter (where error_kind = 'row_count_mismatch'),
               coalesce(sum(len(row_labels)) filter (where version = 'baseline'), 0),
               coalesce(sum(len(row_labels)) filter (where version = 'candidate'), 0)
        from legs""").fetchall()[0]))
    for v, n in con.execute("select version, count(*) filter (where invalid_reason is not null) from prediction_rows "
                            "group by 1").fetchall():
        counts[f"invalid_{v}"] = n
    invalid_reasons = [{"version": v, "reason": r, "rows": int(n)} for v, r, n in con.execute("""
        select version, invalid_reason, count(*) from prediction_rows where invalid_reason is not null
        group by 1, 2 order by 3 desc limit 10""").fetchall()]
    b, c = rows.label["baseline"], rows.label["candidate"]
    judged = (b.codes >= 0) & (c.codes >= 0)
    labels = list(b.labels)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, (b.codes[judged], c.codes[judged]), 1)
    segments = []
    everything = np.ones(pairs.n, dtype=bool)
    for name, column in pairs.segments.items():
        for value in column.present(everything):
            r = _flip_in(rows, column.equals(value), alpha)
            if r is not None:
                segments.append({"segment": f"{name}={value}", **r})
    segments.sort(key=lambda s: -s["flip_rate"])
    flipped = np.flatnonzero(judged & (b.codes != c.codes))
    # examples from as many requests as possible: the first flipped row of each request first
    _, first = np.unique(rows.order_idx[flipped], return_index=True)
    flipped = np.concatenate([flipped[np.sort(first)], np.setdiff1d(flipped, flipped[first])])
    rid = {}
    if len(flipped):
        ids = ", ".join(str(int(x)) for x in np.unique(rows.order_idx[flipped[:examples]]))
        rid = dict(con.execute(f"select order_idx, request_id from requests where order_idx in ({ids})").fetchall())
    example_rows = [{"request_id": rid.get(int(rows.order_idx[i])), "row": int(rows.row_idx[i]),
                     "batch_size": None if not math.isfinite(rows.batch_size[i]) else int(rows.batch_size[i]),
                     "baseline_label": b.labels[b.codes[i]], "candidate_label": c.labels[c.codes[i]],
                     "baseline_score": _num(rows.score["baseline"][i]), "candidate_score": _num(rows.score["candidate"][i])}
                    for i in flipped[:examples]]
    overall = _flip_in(rows, everything, alpha)
    return {"counts": {k: int(v) for k, v in counts.items()}, "judged_rows": int(judged.sum()), "overall": overall,
            "invalid_reasons": invalid_reasons, "labels": labels, "confusion": matrix.tolist(),
            "segments": segments, "examples": example_rows}


def _flip_in(rows: RowData, request_mask: NDArray[np.bool_], alpha: float) -> dict[str, Any] | None:
    sel = request_mask[rows.request_pos]
    b, c = rows.label["baseline"].codes, rows.label["candidate"].codes
    judged = sel & (b >= 0) & (c >= 0)
    if not judged.any():
        return None
    requests = np.unique(rows.order_idx[judged])
    cluster = np.searchsorted(requests, rows.order_idx[judged])
    flips = (b != c)[judged]
    r = clustered_rate(np.bincount(cluster, weights=flips, minlength=len(requests)),
                       np.bincount(cluster, minlength=len(requests)), confidence=1 - alpha, one_sided=False)
    return {"flip_rate": r.estimate, "ci": [r.lower, r.upper], "flips": r.events, "rows": r.n, "requests": r.clusters,
            "design_effect": r.design_effect}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
