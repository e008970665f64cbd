"""Ctrl-C after the replay, while the run is judged: harness says so and exits 4, like any interrupt.

The replay's gevent signal watchers, once cancelled, left SIGINT at the kernel's default action while Python
still believed its own handler was in place: a Ctrl-C during the judging (the bootstrap of a big run takes
minutes) killed the process unseen, exit 130, nothing on stderr; SIGTERM had no handler there at all (exit
143). One that lands inside a DuckDB query surfaces as a later query's error on the connection it cut, with
the KeyboardInterrupt as its context: that is an interrupt too, not an internal error."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fault_server import FaultServer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "ignored"), [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_ctrl_c_while_the_run_is_judged_is_exit_4_with_a_message(tmp_path: Path, signum: int, ignored: bool) -> None:
    """`ignored`: started with SIGINT ignored (nohup, a background job), harness leaves it ignored and the run
    ends with its verdict."""
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.005, "method": "GET", "path": "/ok"}) + "\n"
                               for i in range(200)))
    with FaultServer() as baseline, FaultServer() as candidate:
        scenario = tmp_path / "s.yaml"
        scenario.write_text(f"""name: t
traffic: {{path: {capture}}}
targets: {{baseline: {{url: "{baseline.url}"}}, candidate: {{url: "{candidate.url}"}}}}
analysis: {{bootstrap_resamples: 100000}}
promotion_gates:
  latency_p99_ms: {{maximum_regression_percent: 10}}
""")
        # as from a terminal: a suite started in the background (nohup, `&`) hands its children SIGINT ignored,
        # which harness leaves ignored
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(scenario), "--out", str(tmp_path / "r")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.SIG_DFL))
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith("done: sent"):  # the replay's last line: the judging starts
                    proc.send_signal(signum)
                    break
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    if ignored:
        assert proc.returncode in (0, 1, 2) and "interrupted" not in err, (proc.returncode, err)
        return
    assert proc.returncode == 4, (proc.returncode, err)
    assert "harness: interrupted" in err
    assert "Traceback" not in err
