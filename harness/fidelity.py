"""Was the load that was asked for delivered? If not, which gate results cannot stand.

A replay replays production concurrency only when every request left on time (send lag p99 within
`replay.lag_bound_ms`), both legs of a pair left together (pair skew p99 within the same bound) and none
was skipped at the in-flight limit (`replay.max_in_flight`). A run that misses any of these may not
PROMOTE (docs/judgement.md, "Load fidelity"):

- latency-like gates: a PASS becomes INCONCLUSIVE (the concurrency that could have shown a regression was
  not applied). A FAIL stands while the pair skew is within its bound: both legs of a pair share their
  send lag, and a lag added to both latencies only pulls their ratio towards 1, so the regression is at
  least as large as measured. With the pair skew beyond its bound a FAIL is INCONCLUSIVE too.
- rate gates count the requests of their scope skipped at the in-flight limit as unknown outcomes: a PASS
  must hold with every skipped request counted against the candidate, a FAIL with every one counted
  for it; otherwise INCONCLUSIVE.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .analysis import stats
from .gate_config import LATENCY_LIKE
from .gates import GateResult

__all__ = ["Fidelity", "assess_fidelity", "apply_fidelity", "skipped_in_scope", "IN_FLIGHT_REASON"]

IN_FLIGHT_REASON = "in-flight limit reached (replay.max_in_flight)"


@dataclass(frozen=True)
class Fidelity:
    lag_p99_ms: float | None
    pair_skew_p99_ms: float | None
    bound_ms: float
    skipped_in_flight: int
    problems: tuple[str, ...]  # empty when the load was delivered
    advice: tuple[str, ...]

    @property
    def delivered(self) -> bool:
        return not self.problems

    @property
    def skew_ok(self) -> bool:
        return self.pair_skew_p99_ms is None or self.pair_skew_p99_ms <= self.bound_ms

    @property
    def reason(self) -> str:
        return "load not delivered: " + "; ".join(self.problems)


def assess_fidelity(replay: Mapping[str, Any], *, speed: float, max_in_flight: int) -> Fidelity:
    """From the replay block of summary.json (harness.analysis.overview.replay_fidelity)."""
    bound = float(replay.get("lag_bound_ms") or 0.0)
    lag, skew = replay.get("lag_p99_ms"), replay.get("pair_skew_p99_ms")
    skipped = int(replay.get("skipped_in_flight") or 0)
    problems, advice = [], []
    if lag is not None and lag > bound:
        problems.append(f"send lag p99 {lag:,.0f} ms > {bound:g} ms" if lag >= 10 else
                        f"send lag p99 {lag:.1f} ms > {bound:g} ms")
    if skew is not None and skew > bound:
        problems.append(f"pair skew p99 {skew:,.1f} ms > {bound:g} ms")
    if skipped:
        problems.append(f"{skipped:,} requests skipped at the in-flight limit")
    if problems:
        advice.append(f"lower traffic.speed (now {speed:g}) or replay a shorter window at the same speed")
        advice.append("add load-generator processes (--processes N) where cores are spare, or run harness on a "
                      "machine apart from the targets")
        if skipped:
            advice.append(f"raise replay.max_in_flight (now {max_in_flight:,}) if the targets keep up; a target "
                          "that does not is itself the finding")
    return Fidelity(lag_p99_ms=lag, pair_skew_p99_ms=skew, bound_ms=bound, skipped_in_flight=skipped,
                    problems=tuple(problems), advice=tuple(advice))


def skipped_in_scope(rows: Iterable[Mapping[str, Any]], results: Iterable[GateResult],
                     segment_names: Iterable[str]) -> dict[str | None, int]:
    """How many requests skipped at the in-flight limit fall in each result's scope (segment label)."""
    rows = list(rows)
    names = sorted(segment_names, key=len, reverse=True)
    out: dict[str | None, int] = {}
    for r in results:
        if r.segment in out:
            continue
        scope = _parse_label(r.segment, names)
        out[r.segment] = sum(1 for row in rows if all(str(row.get(k)) == v for k, v in scope.items()))
    return out


def _parse_label(label: str | None, names: list[str]) -> dict[str, str]:
    """"tenant=pro, route=/v1/x" -> {tenant: pro, route: /v1/x}, splitting only where a known segment name
    starts, so that values holding ", " or "=" survive."""
    if not label:
        return {}
    starts = re.compile(r"(?:^|, )(" + "|".join(re.escape(n) for n in names) + r")=") if names else None
    if starts is None:
        return {"?": label}
    found = list(starts.finditer(label))
    scope = {}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(label)
        scope[m.group(1)] = label[m.end():end]
    return scope


def apply_fidelity(results: list[GateResult], fidelity: Fidelity, skipped: Mapping[str | None, int],
                   alpha: float) -> list[GateResult]:
    if fidelity.delivered:
        return results
    return [_latency(r, fidelity) if r.metric in LATENCY_LIKE else
            _rate(r, skipped.get(r.segment, 0), alpha) if r.unit == "fraction" else r for r in results]


def _latency(r: GateResult, f: Fidelity) -> GateResult:
    if r.status == "fail" and f.skew_ok:
        return replace(r, reason=r.reason + f" ({f.reason}: a lag shared by both legs of a pair only pulls the "
                                             "ratio towards 1, so this FAIL stands.)")
    if r.status == "inconclusive":
        return replace(r, reason=r.reason + f" ({f.reason}.)")
    return replace(r, status="inconclusive",
                   reason=r.reason + f" Inconclusive: {f.reason}; the run did not replay production concurrency.")


def _rate(r: GateResult, s: int, alpha: float) -> GateResult:
    """A rate result with s requests of its scope never sent: re-judged with them as unknown outcomes."""
    if s == 0 or r.observed is None or r.n == 0:
        return r
    note = f" {s:,} requests of this scope were skipped at the in-flight limit and count as unknown outcomes"
    if r.status == "inconclusive":
        return replace(r, reason=r.reason + note + ".")
    n, thr = r.n, r.threshold
    worse_is_higher = "<=" in r.threshold_text
    if r.comparison == "delta":
        lo, hi = r.ci or (r.observed, r.observed)
        shift = s / (n + s)
        worst_ok = (hi + shift <= thr) if worse_is_higher else (lo - shift >= thr)
        best_bad = (lo - shift > thr) if worse_is_higher else (hi + shift < thr)
    else:
        k = round(r.observed * n)
        conf = 1 - alpha
        lo_worst, hi_worst = stats.clopper_pearson_interval(k + s if worse_is_higher else k, n + s, conf, True)
        lo_best, hi_best = stats.clopper_pearson_interval(k if worse_is_higher else k + s, n + s, conf, True)
        worst_ok = hi_worst <= thr if worse_is_higher else lo_worst >= thr
        best_bad = lo_best > thr if worse_is_higher else hi_best < thr
    if (r.status == "pass" and worst_ok) or (r.status == "fail" and best_bad):
        return replace(r, reason=r.reason + note + f"; the {r.status.upper()} holds whatever they would have been.")
    return replace(r, status="inconclusive", reason=r.reason + note + f"; counted {'against' if r.status == 'pass' else 'for'}"
                   " the candidate they would change the outcome: inconclusive.")
