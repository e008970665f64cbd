"""harness: offline paired replay of captured traffic against a baseline and a candidate model,
judged per segment with promotion gates, reported on one page with a canary schedule."""
from __future__ import annotations

from .errors import (BadRecordError, HarnessError, ReplayError, ScenarioError, StoreError, TargetUnreachable,
                     TrafficError, UsageError)

__version__ = "0.1.0"

__all__ = [
    "__version__", "HarnessError", "UsageError", "ScenarioError", "TrafficError", "BadRecordError", "StoreError",
    "ReplayError", "TargetUnreachable", "load_scenario", "run_scenario", "build_outputs", "open_run", "RunFolder",
]


def __getattr__(name: str) -> object:
    # Lazy: importing harness must not import locust (which patches the standard library).
    if name == "load_scenario":
        from .scenario import load_scenario

        return load_scenario
    if name == "run_scenario":
        from .run import run_scenario

        return run_scenario
    if name in ("open_run", "RunFolder"):
        from . import run_folder

        return getattr(run_folder, name)
    if name == "build_outputs":
        from .outputs import build_outputs

        return build_outputs
    raise AttributeError(name)
