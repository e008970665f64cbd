"""A snapshot of a running shadow run, made in a process of its own so that the proxy's serving loop
never waits for DuckDB or the report:

    python -m harness.shadow.snapshot ARGS.json

ARGS.json (written by run.py): run_dir, scenario (the YAML path), capture and legs (paths) with the
sizes of their whole-flush prefixes, drops, the replay event. The prefixes are copied, the run folder's
outputs are built from them as at the end of a run (status incomplete, "live shadow still running"),
then moved into the run folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..scenario import load_scenario
from .results import build_results, publish


def _copy_prefix(src: Path, dst: Path, size: int) -> None:
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        remaining = size
        while remaining > 0:
            chunk = f_in.read(min(remaining, 1 << 20))
            if not chunk:
                break
            f_out.write(chunk)
            remaining -= len(chunk)


def make_snapshot(args: dict) -> None:  # type: ignore[type-arg]
    run_dir = Path(args["run_dir"])
    build = run_dir / ".snapshot"
    build.mkdir(exist_ok=True)
    capture, legs = build / "capture.jsonl.gz", build / "legs.jsonl"
    capture.write_bytes(b"")
    legs.write_bytes(b"")
    if args["capture"]:
        _copy_prefix(Path(args["capture"]), capture, int(args["capture_size"]))
    if args["legs"]:
        _copy_prefix(Path(args["legs"]), legs, int(args["legs_size"]))
    build_results(load_scenario(args["scenario"]), build, run_id=run_dir.name, capture_path=capture,
                  capture_recorded=Path(args["capture_recorded"]), legs_path=legs, drops=args["drops"],
                  replay_event=args["replay_event"], status="incomplete", reason=args["reason"])
    capture.unlink(missing_ok=True)
    legs.unlink(missing_ok=True)
    publish(build, run_dir)


if __name__ == "__main__":
    make_snapshot(json.loads(Path(sys.argv[1]).read_text()))
