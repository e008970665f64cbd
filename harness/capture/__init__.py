"""Getting traffic out of production in the capture record format: `harness capture` (a reverse proxy,
and a receiver for KServe's inference logger), and an ASGI middleware for Python model servers.

This package runs on asyncio (aiohttp) and must never import the replay package: gevent's monkey
patching and asyncio must not meet in one process. Nothing is created at import time."""
from __future__ import annotations

__all__ = ["CaptureMiddleware", "CaptureOptions", "run_capture"]


def __getattr__(name: str) -> object:
    # Lazy: the middleware is imported by model servers that do not need aiohttp.
    if name == "CaptureMiddleware":
        from .middleware import CaptureMiddleware

        return CaptureMiddleware
    if name in ("CaptureOptions", "run_capture"):
        from . import proxy

        return getattr(proxy, name)
    raise AttributeError(name)
