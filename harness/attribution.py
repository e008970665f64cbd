"""Which segments explain a regression: segments overlap (a route's error flaw shows up in a tenant, a
geography, two size buckets and their crosses), so listing every failing segment as if independent
hides where the problem is.

For each gate, the failing and suspect segments are taken strongest first (FAILs before suspects, then
by p-value, ties broken by the size of the excess). A segment S is *explained* by a stronger one T of
another dimension when the gate, judged again on the requests of S without those of T, is neither a FAIL
nor beyond its limit: the excess in S vanishes once T is taken out; failing that, by the stronger ones
taken out together. Segments that nothing stronger explains are the leaders; each leader, and each group
of leaders that explains only together, is reported with the segments it explains. This is the
explanation step of the multi-dimensional root-cause methods (Adtributor's "surprise" ranking of single
dimensions, HotSpot's and iDice's search for the smallest set of attribute values that accounts for the
anomaly, MacroBase's removal of an attribute combination to test its explanatory power), reduced to one
question per pair of segments and judged by the gate's own test.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from .analysis.dataset import PairData
from .gate_config import GateSpec
from .gates import GateResult, ResourceSummary
from .gates.evaluate import _evaluate_one, _segment_masks
from .gates.latency import _IMPUTED_CACHE
from .gates.multiplicity import _beyond_limit

__all__ = ["Explanation", "explain_segments", "MAX_EXAMINED"]

MAX_EXAMINED = 20  # the strongest failing or suspect segments of a gate that are examined

_METRIC_TEXT = {"error_rate": "error rate", "timeout_rate": "timeout rate", "schema_pass_rate": "schema pass rate",
                "latency_ms": "latency", "review_score": "review score"}


@dataclass(frozen=True)
class Explanation:
    gate: str
    metric: str
    segment: str  # the leader, or the leaders that explain only together, joined by " + "
    status: str  # fail | suspect
    explains: tuple[str, ...]
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "metric": self.metric, "segment": self.segment, "status": self.status,
                "explains": list(self.explains), "text": self.text}


def _dimension(label: str) -> str:
    """The segment names a label is made of ("tenant=pro, route=/x" -> "route,tenant")."""
    return ",".join(sorted(part.split("=", 1)[0] for part in label.split(", ")))


def explain_segments(specs: Iterable[GateSpec], results: list[GateResult], data: PairData,
                     resources: ResourceSummary | None, *, alpha: float = 0.05, n_resamples: int = 2000,
                     seed: int = 0) -> tuple[list[GateResult], list[Explanation]]:
    """(results with `explained_by` set on every explained segment, the leaders with what they explain)."""
    out = list(results)
    explanations: list[Explanation] = []
    for spec in specs:
        own = ", ".join(f"{k}={v}" for k, v in spec.segment.items()) if spec.segment else None
        flagged = [(i, r) for i, r in enumerate(out) if r.name == spec.name and r.segment not in (None, own)
                   and (r.status == "fail" or r.suspect)]
        if len(flagged) < 2:
            if flagged:
                explanations.append(_explanation(spec, flagged[0][1], ()))
            continue
        masks = {label: mask for label, mask in _segment_masks(data, spec)}
        flagged.sort(key=lambda ir: _strongest_first(ir[1], 1.0 / max(n_resamples, 1)))
        flagged = flagged[:MAX_EXAMINED]  # each check is a judgement again: bounded per gate
        leaders: list[tuple[GateResult, list[str]]] = []
        # leaders taken out together, by the name explained_by gives them: (those leaders, what they explain)
        together: dict[str, tuple[list[GateResult], list[str]]] = {}
        for i, s in flagged:
            s_mask = masks.get(s.segment)
            if s_mask is None:
                leaders.append((s, []))
                continue
            by: str | None = None
            for t, members in leaders:
                if _dimension(t.segment or "") == _dimension(s.segment or ""):
                    continue  # values of one segment do not overlap
                rest = s_mask & ~masks[t.segment]
                if int(rest.sum()) == int(s_mask.sum()):
                    continue
                again = _evaluate_one(spec, data, rest, f"{s.segment} without {t.segment}", resources, alpha,
                                      n_resamples, seed)
                # "too little left to judge" is no evidence that the excess vanishes: not an explanation
                if again.observed is not None and again.status != "fail" and not _beyond_limit(again):
                    by = t.segment
                    members.append(s.segment or "")
                    out[i] = replace(s, explained_by=by, reason=s.reason + (
                        f" Explained by {by}: without its requests, {_short(again)}."))
                    break
            if by is None:
                several = _explained_by_several(spec, data, s, s_mask, leaders, masks, resources, alpha, n_resamples,
                                                seed)
                if several is not None:
                    group, short = several
                    by = " + ".join(t.segment or "" for t in group)
                    together.setdefault(by, (group, []))[1].append(s.segment or "")
                    out[i] = replace(s, explained_by=by, reason=s.reason + f" Explained by {by} together: "
                                                                           f"without their requests, {short}.")
            if by is None:
                leaders.append((s, []))
        everywhere, single = _everywhere(spec, out, own)
        if everywhere:  # one line for a failure every value of a segment shares, not one per value
            # a segment of one value holds the requests of the gate's own scope, which the line names already
            leaders = [(t, m) for t, m in leaders if m or _dimension(t.segment or "") not in everywhere | single]
            what = _metric_text(spec)
            explanations.append(Explanation(spec.name, spec.metric, "", "fail", (), (
                f"{spec.name} ({what}): everywhere: {own or 'overall'} and every value of "
                f"{', '.join(sorted(everywhere))} fail; no one value explains it")))
        # a leader that explains something only together with others is named on the line of that group alone:
        # "quirk=r429 explains the excess in ..." for each of them would claim what none of them does alone
        grouped = {t.segment for group, _ in together.values() for t in group}
        explanations += [_explanation(spec, t, tuple(members)) for t, members in leaders
                         if members or t.segment not in grouped]
        explanations += [_group_explanation(spec, by, group, tuple(members))
                         for by, (group, members) in together.items()]
    _IMPUTED_CACHE.clear()
    explanations.sort(key=lambda e: (e.status != "fail", -len(e.explains)))
    return out, explanations


def _everywhere(spec: GateSpec, results: list[GateResult], own: str | None) -> tuple[set[str], set[str]]:
    """(the segments (dimensions) of a gate whose every value, two or more, fails or is suspect, none explained
    by another segment, while the gate fails in its own scope; the segments of one value that fails so):
    the excess is not localized there, and "tenant=a, explained by no stronger segment" for each tenant in
    turn would say it is. One value failing is no evidence that the failure is shared by several."""
    if not any(r.name == spec.name and r.segment == own and r.status == "fail" for r in results):
        return set(), set()
    values: dict[str, list[bool]] = {}
    for r in results:
        if r.name == spec.name and r.segment not in (None, own):
            values.setdefault(_dimension(r.segment or ""), []).append(
                (r.status == "fail" or r.suspect) and r.explained_by is None)
    failing = {d for d, flags in values.items() if flags and all(flags)}
    single = {d for d in failing if len(values[d]) == 1}
    return failing - single, single


def _explained_by_several(spec: GateSpec, data: PairData, s: GateResult, s_mask: np.ndarray,
                          leaders: list[tuple[GateResult, list[str]]], masks: dict[str | None, np.ndarray],
                          resources: ResourceSummary | None, alpha: float, n_resamples: int,
                          seed: int) -> tuple[list[GateResult], str] | None:
    """Two flaws can each leave S beyond its limit when the other is taken out: try all the stronger
    leaders of other dimensions at once. (those leaders, what is left of S without them) when that explains S."""
    others = [(t, members) for t, members in leaders if _dimension(t.segment or "") != _dimension(s.segment or "")]
    if len(others) < 2:
        return None
    group = [t for t, _ in others]
    again = _without(spec, data, s, s_mask, group, masks, resources, alpha, n_resamples, seed)
    if again is None:
        return None
    # A leader whose requests in S the others hold already (a cross inside its own tenant) takes nothing more
    # out: it is left off the group's name, weakest first. Taking it out changes no request, so the judgement
    # stands as made.
    for t in reversed(group[:]):
        fewer = [u for u in group if u is not t]
        if len(fewer) < 2:
            break
        own = s_mask & masks[t.segment]
        for u in fewer:
            own &= ~masks[u.segment]
        if not own.any():
            group = fewer
    return group, _short(again)


def _without(spec: GateSpec, data: PairData, s: GateResult, s_mask: np.ndarray, group: list[GateResult],
             masks: dict[str | None, np.ndarray], resources: ResourceSummary | None, alpha: float,
             n_resamples: int, seed: int) -> GateResult | None:
    """S judged again without the requests of the group, where that explains S (neither a FAIL nor beyond its
    limit, with enough left to judge); else None."""
    rest = s_mask.copy()
    for t in group:
        rest &= ~masks[t.segment]
    names = " + ".join(t.segment or "" for t in group)
    again = _evaluate_one(spec, data, rest, f"{s.segment} without {names}", resources, alpha, n_resamples, seed)
    if again.observed is None or again.status == "fail" or _beyond_limit(again):
        return None
    return again


def _evidence(r: GateResult) -> float:
    p = r.p_value if r.status == "fail" else r.p_worse
    return 1.0 if p is None or not np.isfinite(p) else float(p)


def _strongest_first(r: GateResult, resolution: float) -> tuple[bool, float, float, float, int]:
    """FAILs before suspects, then by p-value; p-values below `resolution` tie, and among ties the larger
    excess comes first. A bootstrap p-value is 0 for every clear FAIL and a normal tail's underflows at large
    n, so without the tie a larger segment that only overlaps the flaw was examined before the flaw's own
    segment, became a leader, and the flaw could no longer explain it."""
    p = _evidence(r)
    effect = r.effect if r.effect is not None and np.isfinite(r.effect) else -np.inf
    return r.status != "fail", max(p, resolution), -effect, p, -r.n


def _metric_text(spec: GateSpec) -> str:
    return _METRIC_TEXT.get(spec.metric, spec.metric.replace("_", " "))


def _short(r: GateResult) -> str:
    if r.observed is None:
        return f"too little is left to judge (n={r.n})"
    return f"{r.status} at n={r.n} (observed {r.observed:.4g} vs {r.threshold_text})"


def _explanation(spec: GateSpec, leader: GateResult, members: tuple[str, ...]) -> Explanation:
    what = _metric_text(spec)
    status = "fail" if leader.status == "fail" else "suspect"
    text = (f"{spec.name} ({what}): {leader.segment} explains the excess in {', '.join(members)}" if members
            else f"{spec.name} ({what}): {leader.segment}, explained by no stronger segment")
    return Explanation(spec.name, spec.metric, leader.segment or "", status, members, text)


def _group_explanation(spec: GateSpec, by: str, group: list[GateResult], members: tuple[str, ...]) -> Explanation:
    """The line of leaders that explain the excess in `members` only when taken out together; `by` is the
    name the members' explained_by gives them."""
    what = _metric_text(spec)
    status = "fail" if all(t.status == "fail" for t in group) else "suspect"
    return Explanation(spec.name, spec.metric, by, status, members,
                       f"{spec.name} ({what}): {by} together explain the excess in {', '.join(members)}")
