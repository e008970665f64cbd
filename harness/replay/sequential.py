"""Watching paired error incidence while a replay runs, so that it can stop early on a clear failure.

As pairs complete, the discordant pairs are counted: b = baseline-only errors, c = candidate-only
errors. After every `check_every` completed pairs an injected rule (the orchestrator's anytime-valid
test, which may be looked at after every pair) decides whether to stop; the replay then stops sending,
finishes what is in flight, and records why.
"""
from __future__ import annotations

from typing import Any, Callable

from ..error_kinds import CONSUMER_ERROR_KINDS

__all__ = ["PairErrorWatch", "StopRule"]

StopRule = Callable[[int, int, int], "str | None"]  # (pairs, b, c) -> reason to stop, or None


class PairErrorWatch:
    def __init__(self, rule: StopRule, stop: Callable[[str], None], versions: int = 2,
                 check_every: int = 20) -> None:
        self.rule = rule
        self.stop = stop
        self.versions = versions
        self.check_every = check_every
        self._first: dict[str, bool] = {}
        self.pairs = self.b = self.c = 0
        self.stopped: str | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        if self.stopped is not None or self.versions != 2:
            return
        failed = row["error_kind"] in CONSUMER_ERROR_KINDS
        other = self._first.pop(row["request_id"], None)
        if other is None:
            self._first[row["request_id"]] = failed
            return
        b_failed, c_failed = (other, failed) if row["version"] == "candidate" else (failed, other)
        self.pairs += 1
        self.b += b_failed and not c_failed
        self.c += c_failed and not b_failed
        if self.pairs % self.check_every == 0:
            reason = self.rule(self.pairs, self.b, self.c)
            if reason is not None:
                self.stopped = reason
                self.stop(reason)
