"""Watching paired error incidence while a replay runs, so that it can stop early on a clear failure.

As pairs complete, the discordant pairs are counted: b = baseline-only errors, c = candidate-only
errors. After every `check_every` completed pairs an injected rule (the orchestrator's anytime-valid
test, which may be looked at after every pair) decides whether to stop; the replay then stops sending,
finishes what is in flight, and records why.
"""
from __future__ import annotations

from typing import Any, Callable

from ..error_kinds import pair_failed

__all__ = ["PairErrorCount", "PairErrorWatch", "StopRule"]

# (pairs, b, c) -> reason to stop, or None. A rule may carry `warmup` (int): pairs whose order_idx is
# below it are warm-up requests, sent but never judged, so they are not counted either.
StopRule = Callable[[int, int, int], "str | None"]


class PairErrorCount:
    """Discordant pairs counted as legs arrive, both legs of a pair in one process (a worker counts its own
    shard and hands the counts to the master's watch)."""

    def __init__(self, versions: int = 2, warmup: int = 0) -> None:
        self.versions = versions
        self.warmup = warmup
        self._first: dict[str, str | None] = {}
        self.pairs = self.b = self.c = 0
        self._taken = (0, 0, 0)

    def __call__(self, row: dict[str, Any]) -> None:
        if self.versions != 2 or row.get("order_idx", self.warmup) < self.warmup:
            return
        kind = row["error_kind"]
        if row["request_id"] not in self._first:
            self._first[row["request_id"]] = kind
            return
        other = self._first.pop(row["request_id"])
        failed, other_failed = pair_failed(kind, other), pair_failed(other, kind)
        b_failed, c_failed = (other_failed, failed) if row["version"] == "candidate" else (failed, other_failed)
        self.pairs += 1
        self.b += b_failed and not c_failed
        self.c += c_failed and not b_failed

    def take(self) -> tuple[int, int, int]:
        """(pairs, b, c) counted since the last take."""
        now = (self.pairs, self.b, self.c)
        delta = tuple(x - y for x, y in zip(now, self._taken))
        self._taken = now
        return delta  # type: ignore[return-value]


class PairErrorWatch(PairErrorCount):
    def __init__(self, rule: StopRule, stop: Callable[[str], None], versions: int = 2,
                 check_every: int = 20) -> None:
        super().__init__(versions, int(getattr(rule, "warmup", 0)))
        self.rule = rule
        self.stop = stop
        self.check_every = check_every
        self._checked_at = 0
        self.stopped: str | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        if self.stopped is None:
            super().__call__(row)
            self._check()

    def add(self, pairs: int, b: int, c: int) -> None:
        """Pairs counted elsewhere (a worker's PairErrorCount)."""
        if self.stopped is None:
            self.pairs += pairs
            self.b += b
            self.c += c
            self._check()

    def _check(self) -> None:
        if self.pairs - self._checked_at >= self.check_every:
            self._checked_at = self.pairs
            reason = self.rule(self.pairs, self.b, self.c)
            if reason is not None:
                self.stopped = reason
                self.stop(reason)
