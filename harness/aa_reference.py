"""The A/A noise floor a paired run is judged against (replay.aa_reference), read once when the run is made.

The A/A run's summary.json is copied into this run's results.duckdb (an `events` row of kind
`aa_reference`), so that a run is judged from its own folder: `harness report` elsewhere works, and
re-judging or deleting the A/A folder later cannot change this run's verdict."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ScenarioError

__all__ = ["read_aa_reference", "noise_by_gate", "field_rates"]


def read_aa_reference(ref: Path) -> dict[str, Any]:
    """What a paired run keeps of its A/A reference: its run id, where it was, its per-gate noise floor and its
    per-field A/A rates. An unreadable or non-A/A reference is a scenario error, before anything is sent."""
    path = ref / "summary.json" if ref.is_dir() else ref
    try:
        aa = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read the A/A reference (replay.aa_reference): {exc}") from None
    if not isinstance(aa, dict) or (aa.get("run") or {}).get("mode") != "aa" or not aa.get("noise_floor"):
        raise ScenarioError(f"{path}: replay.aa_reference must be the run folder of an A/A run (replay.mode: aa)")
    status = (aa.get("run") or {}).get("status")
    if status != "complete":
        raise ScenarioError(f"{path}: replay.aa_reference: the A/A run is {status or 'not complete'} "
                            f"({(aa.get('run') or {}).get('status_reason') or 'no reason recorded'}); its noise "
                            "floor is from part of its traffic: run it to the end")
    return {"source": str(path), "run_id": (aa.get("run") or {}).get("id"), "noise_floor": aa["noise_floor"],
            "aa_field_rates": (aa.get("outputs") or {}).get("aa_field_rates")}


def noise_by_gate(ref: dict[str, Any]) -> dict[tuple[str, str | None], tuple[float, str | None]]:
    """(gate name, segment) -> (the A/A difference, what it measures: gates.result.delta_scale; None from an
    A/A run made before it was recorded)."""
    return {(x["gate"], x["segment"]): (float(x["delta"]), x.get("scale")) for x in ref["noise_floor"]
            if x["delta"] is not None}


def field_rates(ref: dict[str, Any]) -> tuple[dict[tuple[str, str], float] | None, int | None, str | None]:
    block = ref.get("aa_field_rates")
    if not block:
        return None, None, (f"The A/A reference {ref['source']} carries no per-field A/A rates (made by an older "
                            "harness): output field differences are reported without a noise floor.")
    return {(f["path"], f["kind"]): float(f["rate"]) for f in block["fields"]}, int(block["pairs"]), None
