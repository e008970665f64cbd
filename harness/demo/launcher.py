"""`harness demo`: start the demo model servers, replay the sample capture against them, stop them.

The servers are real processes on free ports of 127.0.0.1; the scenario is scenarios/fraud_demo.yaml
with its target URLs pointed at them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from ..errors import VERDICT_EXIT, ReplayError, UsageError

__all__ = ["run_demo", "demo_servers", "start_server", "REPO_ROOT", "DEMO_SCENARIO"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_SCENARIO = REPO_ROOT / "scenarios" / "fraud_demo.yaml"


class DemoServer:
    def __init__(self, variant: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.variant = variant
        self.proc = proc
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_server(variant: str, port: int = 0, timeout_s: float = 20.0) -> DemoServer:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, "-m", "harness.demo.server", "--variant", variant,
                                 "--port", str(port), "--port-file", str(port_file)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return DemoServer(variant, proc, int(port_file.read_text().strip()))
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
                raise ReplayError(f"demo server {variant} exited with {proc.returncode}: {err[-1] if err else ''}")
            time.sleep(0.05)
        proc.kill()
        raise ReplayError(f"demo server {variant} did not start within {timeout_s:g} s")


@contextmanager
def demo_servers(candidate_variant: str) -> Iterator[tuple[DemoServer, DemoServer]]:
    baseline = start_server("baseline")
    try:
        candidate = start_server(candidate_variant)
        try:
            yield baseline, candidate
        finally:
            candidate.stop()
    finally:
        baseline.stop()


def run_demo(clean: bool = False, out_root: Path = Path("reports"), speed: float | None = None,
             max_requests: int | None = None, echo: object = print) -> object:
    from ..outputs import build_outputs
    from ..run import run_scenario
    from ..scenario import load_scenario
    from .review import review_run

    if not DEMO_SCENARIO.exists():
        raise UsageError(f"{DEMO_SCENARIO}: the demo scenario is missing (harness demo runs from a checkout)")
    scenario = load_scenario(DEMO_SCENARIO).with_overrides(speed=speed, max_requests=max_requests)
    variant = "candidate-clean" if clean else "candidate"
    with demo_servers(variant) as (baseline, candidate):
        targets = {v: replace(scenario.targets[v], url=server.url,
                              metrics_url=server.url + "/metrics" if scenario.targets[v].metrics_url else None)
                   for v, server in (("baseline", baseline), ("candidate", candidate))}
        name = scenario.name + ("-clean" if clean else "")
        scenario = replace(scenario, targets=targets, name=name)
        result = run_scenario(scenario, out_root, echo=echo,  # type: ignore[arg-type]
                              pids={"baseline": baseline.proc.pid, "candidate": candidate.proc.pid})
    if result.summary["run"].get("status") != "complete":
        return result
    # The review that follows a shadow run, simulated: grades imported, then the gates judged again.
    n = review_run(result.run_dir, scenario.traffic.path)
    echo(f"review panel: {n} graded answers imported; judging again")  # type: ignore[operator]
    summary = build_outputs(result.run_dir)
    return replace(result, summary=summary, verdict=summary["verdict"],
                   exit_code=VERDICT_EXIT[summary["verdict"]])
