"""Canary schedule (first version: steps and rollback conditions; sizing comes with the schedule issue)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["build_schedule", "write_schedule"]


def build_schedule(summary: dict[str, Any], scenario: Any, con: Any) -> dict[str, Any]:
    steps = [{"name": "shadow", "traffic_percent": 0}] + [
        {"name": f"canary-{p:g}", "traffic_percent": p} for p in scenario.canary.steps_percent]
    return {"scenario": scenario.name, "verdict": summary["verdict"], "owner": scenario.owner, "steps": steps}


def write_schedule(path: Path, schedule: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(schedule, sort_keys=False), encoding="utf-8")
