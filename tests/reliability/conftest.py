"""Fixtures of the reliability suite; the helpers live in reliability_kit.py."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from reliability_kit import HarnessProc


@pytest.fixture
def harness_proc() -> Iterator[Callable[..., HarnessProc]]:
    """Starts `harness` subprocesses; any still running at the end of the test is killed."""
    started: list[HarnessProc] = []

    def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> HarnessProc:
        p = HarnessProc([str(a) for a in args], cwd, env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill_if_running()
