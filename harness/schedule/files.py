"""canary_schedule.yaml: writing and loading it, and the exports of a schedule (refused for a run that
did not PROMOTE unless forced)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import ExportRefused, StoreError, UsageError
from .build import _join_reasons
from .manifests import _argo, _flagger, _istio
from .policy import EXPORT_FORMATS


class _Dumper(yaml.SafeDumper):
    """Plain YAML for humans and kubectl: no anchors/aliases, multi-line strings (queries) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data and not any(line != line.rstrip() for line in data.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(docs: list[dict[str, Any]], multi: bool) -> str:
    if multi:
        return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096, explicit_start=True)
    return yaml.dump(docs[0], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def write_schedule(path: Path, schedule: dict[str, Any]) -> None:
    path.write_text(export_schedule(schedule, "yaml"), encoding="utf-8")


def load_schedule(run_dir: Path) -> dict[str, Any]:
    """The schedule of a run folder: canary_schedule.yaml, else the one in summary.json. A folder with
    neither is rebuilt from its results.duckdb by `harness report RUN_DIR`."""
    run_dir = Path(run_dir)
    path = run_dir / "canary_schedule.yaml"
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise StoreError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(loaded, dict):
            return loaded
        raise StoreError(f"{path}: expected a mapping, got {type(loaded).__name__}")
    summary = run_dir / "summary.json"
    if summary.exists():
        sched = json.loads(summary.read_text(encoding="utf-8")).get("schedule")
        if isinstance(sched, dict):
            return sched
    if not (run_dir / "results.duckdb").exists():
        raise StoreError(f"{run_dir}: not a run folder (no canary_schedule.yaml, summary.json or results.duckdb)")
    raise StoreError(f"{run_dir}: no canary_schedule.yaml; rebuild it from results.duckdb with "
                     f"`harness report {run_dir}`")


def export_refusal(schedule: dict[str, Any], fmt: str) -> ExportRefused | None:
    """Why manifests of this schedule must not be exported without --force (None when they may): applied by
    kubectl they would start a canary of a candidate that did not PROMOTE. The yaml schedule says so itself."""
    verdict = str(schedule.get("verdict"))
    if fmt == "yaml" or verdict == "PROMOTE":
        return None
    reasons = list(schedule.get("verdict_reasons") or [])
    why = f": {_join_reasons(reasons, limit=1)}" if reasons else ""
    return ExportRefused(f"run {schedule.get('run_id')}: verdict {verdict}{why}; no {fmt} export of a candidate that "
                         "did not PROMOTE (--force exports it, marked as forced in every object)",
                         {"BLOCK": 1, "HOLD": 2}.get(verdict, 4))


def export_schedule(schedule: dict[str, Any], fmt: str, *, force: bool = False) -> str:
    """The schedule as canary_schedule.yaml text ("yaml") or as manifests for Argo Rollouts, Flagger or Istio.
    With `force`, manifests of a run that did not PROMOTE carry the annotation harness/forced-export."""
    if fmt == "yaml":
        head = f"# canary schedule for {schedule.get('scenario')} (harness); every number has a basis\n"
        head += f"# {schedule.get('banner')}\n"
        return head + _dump([schedule], multi=False)
    builders = {"argo": _argo, "flagger": _flagger, "istio": _istio}
    if fmt not in builders:
        raise UsageError(f"unknown schedule format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")
    docs, comments = builders[fmt](schedule)
    if force and export_refusal(schedule, fmt) is not None:
        mark = f"verdict {schedule.get('verdict')}: exported with --force, not a promoted candidate"
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("annotations", {})["harness/forced-export"] = mark
        comments = [f"FORCED EXPORT: {mark}", *comments]
    head = "".join(f"# {c}\n" for c in [f"{fmt} export of the canary schedule for {schedule.get('scenario')} "
                                        f"(run {schedule.get('run_id')}) by harness", str(schedule.get("banner")),
                                        *comments])
    return head + _dump(docs, multi=True)

