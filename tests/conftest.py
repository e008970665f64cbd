"""Locust patches the standard library with gevent when it is imported. Tests run real replays in
this process, so the patch is applied first, before any test starts a thread or a server: a patch
applied later, while threads run, deadlocks."""
from __future__ import annotations

import sys
from pathlib import Path

import locust  # noqa: F401  - imported for its monkey patching, first

sys.path.insert(0, str(Path(__file__).parent))
