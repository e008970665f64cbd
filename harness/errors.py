"""The one exception tree of harness.

    HarnessError                 anything a user can cause; the CLI turns it into an exit code
    ├── UsageError               bad command-line usage                          -> exit 3
    ├── ScenarioError            scenario YAML, gates, schema files               -> exit 3
    ├── TrafficError             a capture that cannot be read                    -> exit 3
    │   └── BadRecordError       one malformed record (file, line, reason)        -> exit 3
    ├── ExportRefused            manifests of a run that did not PROMOTE          -> exit 1 BLOCK, 2 HOLD, 4
    ├── StoreError               results.duckdb or the run folder                 -> exit 4
    └── ReplayError              the run could not be carried out                 -> exit 4
        └── TargetUnreachable    a target refused or never answered the probe     -> exit 4

Bugs are not HarnessErrors and are never caught.
"""
from __future__ import annotations

__all__ = [
    "VERDICT_EXIT",
    "HarnessError",
    "UsageError",
    "ScenarioError",
    "TrafficError",
    "BadRecordError",
    "ExportRefused",
    "StoreError",
    "ReplayError",
    "TargetUnreachable",
]


class HarnessError(Exception):
    exit_code = 4


class UsageError(HarnessError):
    exit_code = 3


class ScenarioError(HarnessError):
    exit_code = 3


class TrafficError(HarnessError):
    exit_code = 3


class BadRecordError(TrafficError):
    """One malformed record; readers yield BadRecord values instead of raising where they can go on."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


class ExportRefused(HarnessError):
    """`harness schedule --format argo|flagger|istio` of a run whose verdict is not PROMOTE (without --force):
    the exit code is the verdict's, so a pipeline step fails the way the run did."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StoreError(HarnessError):
    exit_code = 4


class ReplayError(HarnessError):
    exit_code = 4


class TargetUnreachable(ReplayError):
    exit_code = 4


# The exit code of each summary.json verdict (README's table); INCOMPLETE is a run that could not be
# carried out whole.
VERDICT_EXIT = {"PROMOTE": 0, "BLOCK": 1, "HOLD": 2, "INCOMPLETE": 4}
