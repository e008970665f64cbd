"""A small real run for tests: a capture of n POSTs, two AnswerServers, run_scenario into tmp_path."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from answer_server import AnswerServer

__all__ = ["small_run", "write_posts", "OK_ANSWER"]

OK_ANSWER = json.dumps({"prediction": "legit", "confidence": 0.5}).encode()


def write_posts(path: Path, n: int, gap_s: float = 0.005) -> Path:
    path.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * gap_s, "method": "POST", "path": "/score",
                                        "headers": {"X-Tenant": "pro" if i % 2 else "free"},
                                        "body": {"x": i}}) + "\n" for i in range(n)))
    return path


def small_run(tmp_path: Path, n: int = 60, *, answer: bytes = OK_ANSWER, candidate_status: int = 200,
              gates: dict[str, Any] | None = None, delay_s: float = 0.0, gap_s: float = 0.005, host: str = "127.0.0.1",
              **replay: Any) -> Any:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    tmp_path.mkdir(parents=True, exist_ok=True)
    capture = write_posts(tmp_path / "c.jsonl", n, gap_s)
    with AnswerServer(answer, delay_s=delay_s, host=host) as baseline, \
            AnswerServer(answer, candidate_status, delay_s=delay_s, host=host) as candidate:
        s = scenario_from_dict({
            "name": "t", "traffic": {"path": str(capture), "speed": 1},
            "segments": {"tenant": {"header": "X-Tenant"}},
            "targets": {"baseline": {"url": baseline.url}, "candidate": {"url": candidate.url}},
            "replay": {"allow": ["POST /*"], **replay},
            "promotion_gates": gates or {"error_rate": {"maximum": 0.05}}})
        return run_scenario(s, tmp_path / "r", echo=lambda m: None)
