"""Gate results -> the verdict: BLOCK, HOLD or PROMOTE, with its reasons."""
from __future__ import annotations

from dataclasses import dataclass, field

from .result import GateResult


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reasons: list[str] = field(default_factory=list)


def decide_verdict(results: list[GateResult], stopped_early: str | None = None, mode: str = "paired",
                   same_target: str | None = None) -> Verdict:
    """BLOCK if a blocking gate fails anywhere, or the replay was stopped early (the anytime-valid test
    showed the error excess beyond its allowance: what is left of the run cannot undo that); HOLD if a
    blocking gate is inconclusive in its own scope (overall, or the segment the gate names); else PROMOTE.
    Inconclusive diagnostic segments are listed in the report, but do not hold the release on their own.
    No PROMOTE without a blocking gate (warnings inform, they decide nothing), nor from a run that did not
    send the candidate its own requests (replay.mode aa or baseline-only, or a paired run whose two targets
    are one server: `same_target`, Scenario.self_comparison): exit 0 releases a candidate."""
    verdict = _by_gates(results, stopped_early)
    if verdict.verdict != "PROMOTE":
        return verdict
    if mode != "paired":
        sent = ("both legs went to the baseline (an A/A run: the gates measured the noise floor, and none failed)"
                if mode == "aa" else "only the baseline was replayed")
        return Verdict("HOLD", [f"No candidate judged: replay.mode is {mode}, {sent}; a paired run decides a "
                                f"promotion.", *verdict.reasons])
    if same_target:
        return Verdict("HOLD", [f"No candidate judged: {same_target}; a paired run against the candidate's own "
                                f"server decides a promotion.", *verdict.reasons])
    if not any(r.severity == "blocking" for r in results):
        warned = _failing_warnings(_scopes(results))
        return Verdict("HOLD", ["No blocking gate: warnings inform, they decide no promotion; give the scenario "
                                "at least one gate with severity blocking."
                                + (f" {len(warned)} warning gate(s) fail: {', '.join(warned)}." if warned else "")])
    return verdict


def _scopes(results: list[GateResult]) -> dict[str, GateResult]:
    """Each gate's first result: its own scope (overall, or the segment the gate names)."""
    scopes: dict[str, GateResult] = {}
    for r in results:
        scopes.setdefault(r.name, r)
    return scopes


def _failing_warnings(scopes: dict[str, GateResult]) -> list[str]:
    """The warning gates that fail in their own scope."""
    return [r.name for r in scopes.values() if r.severity != "blocking" and r.status == "fail"]


def _by_gates(results: list[GateResult], stopped_early: str | None) -> Verdict:
    blocking = [r for r in results if r.severity == "blocking"]
    fails = [r for r in blocking if r.status == "fail"]
    if stopped_early:
        text = stopped_early.rstrip(".")
        text = text[0].upper() + text[1:] if text.lower().startswith("stopped early") else f"Stopped early: {text}"
        return Verdict("BLOCK", [f"{text}.", *(r.reason for r in fails)])
    if fails:
        return Verdict("BLOCK", [r.reason for r in fails])
    scopes = _scopes(results)
    inconclusive = [r for r in scopes.values() if r.severity == "blocking" and r.status == "inconclusive"]
    suspects = [r for r in blocking if r.suspect and r not in inconclusive]
    if inconclusive or suspects:
        return Verdict("HOLD", [r.reason for r in inconclusive + suspects])
    gated = [r for r in scopes.values() if r.severity == "blocking"]
    warned = _failing_warnings(scopes)
    return Verdict("PROMOTE", [f"All {len(gated)} blocking gates pass in their scope; no segment fails."
                               + (f" Warning gates that fail (they do not block): {', '.join(warned)}." if warned else "")])

