"""Shared fixtures, and the order of imports that in-process replays need.

Locust patches the standard library with gevent when it is imported. Integration tests run real
replays in this process, so the patch is applied first, before any test module imports ssl or starts a
thread or a server: a patch applied later, while threads run, deadlocks. The unit tier
(`-m "not integration"`, `make test-fast`) replays nothing and runs without the patch."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _unit_tier_only(config: pytest.Config) -> bool:
    return (config.option.markexpr or "").replace(" ", "") == "notintegration"


def pytest_configure(config: pytest.Config) -> None:
    if not _unit_tier_only(config):
        import locust  # noqa: F401  - imported for its monkey patching, before any test module


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The unit tier does not even import a module that is integration as a whole.
    if _unit_tier_only(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if "\npytestmark = pytest.mark.integration\n" in collection_path.read_text(encoding="utf-8"):
            return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `slow` is the older name of `integration`: both keep a test out of the unit tier.
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A unit test that ends up importing locust replays something: it belongs to the integration tier.
    if _unit_tier_only(session.config) and "locust" in sys.modules:
        session.config.get_terminal_writer().line(
            "error: the unit tier imported locust; mark the test that replays @pytest.mark.integration", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo (`harness demo`: demo servers, the whole sample capture with its planted flaws, a
    Locust replay at the demo's speed, the simulated review), run once per pytest session and shared by
    every test that reads a real run folder. Tests must not change it: copy it first."""
    from harness.demo.launcher import run_demo

    return run_demo(clean=False, out_root=tmp_path_factory.mktemp("demo"), speed=DEMO_SPEED, echo=lambda _msg: None)


DEMO_SPEED = 4  # the demo's own speed: the planted effects are sized for it on a 2-core machine
