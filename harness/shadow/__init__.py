"""Live shadow traffic: a proxy answers every request from the baseline and sends a copy to the candidate,
and the legs land in a run folder like a replay's (`harness shadow`). Runs on asyncio (aiohttp): it must
never import the Locust side of harness.replay. Nothing is created at import time."""
from __future__ import annotations

__all__ = ["run_shadow"]


def __getattr__(name: str) -> object:
    if name == "run_shadow":
        from .run import run_shadow

        return run_shadow
    raise AttributeError(name)
