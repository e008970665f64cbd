"""Gate results -> the verdict: BLOCK, HOLD or PROMOTE, with its reasons."""
from __future__ import annotations

from dataclasses import dataclass, field

from .result import GateResult


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reasons: list[str] = field(default_factory=list)


def decide_verdict(results: list[GateResult], stopped_early: str | None = None) -> Verdict:
    """BLOCK if a blocking gate fails anywhere, or the replay was stopped early (the anytime-valid test
    showed the error excess beyond its allowance: what is left of the run cannot undo that); HOLD if a
    blocking gate is inconclusive in its own scope (overall, or the segment the gate names); else PROMOTE.
    Inconclusive diagnostic segments are listed in the report, but do not hold the release on their own."""
    blocking = [r for r in results if r.severity == "blocking"]
    fails = [r for r in blocking if r.status == "fail"]
    if stopped_early:
        text = stopped_early.rstrip(".")
        text = text[0].upper() + text[1:] if text.lower().startswith("stopped early") else f"Stopped early: {text}"
        return Verdict("BLOCK", [f"{text}.", *(r.reason for r in fails)])
    if fails:
        return Verdict("BLOCK", [r.reason for r in fails])
    scopes = {}
    for r in results:
        scopes.setdefault(r.name, r)  # the first result of each gate is its own scope
    inconclusive = [r for r in scopes.values() if r.severity == "blocking" and r.status == "inconclusive"]
    suspects = [r for r in blocking if r.suspect and r not in inconclusive]
    if inconclusive or suspects:
        return Verdict("HOLD", [r.reason for r in inconclusive + suspects])
    return Verdict("PROMOTE", [f"All {len(scopes)} gates pass in their scope; no segment fails."])

