"""The proxy's side of the recorder (recorder.py): raw exchanges go to that process over its stdin, never
blocking the user's answer.

`put(item)` appends a plain tuple (bytes, strings, timestamps) to a batch; every `batch_s` (10 ms) one
callback on the serving loop pickles the batch and writes it as one frame to the pipe. The write never
waits: the loop's pipe transport keeps what the pipe cannot take yet, and where that reaches
`max_buffered_bytes` (the recorder is behind) or the recorder has exited, a batch is dropped and each
item counted with its reason (`on_drop`). One batch a tick rather than a write per request spares the
loop a system call per request.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ..frames import child_env, frame
from ..scenario import Scenario

__all__ = ["RecorderChannel", "CHANNEL_FULL", "RECORDER_GONE"]

CHANNEL_FULL = "not recorded: the recorder process was behind (its channel was full)"
RECORDER_GONE = "not recorded: the recorder process had exited"


class RecorderChannel:
    def __init__(self, on_drop: Callable[[tuple[Any, ...], str], None] | None = None, *, batch_s: float = 0.01,
                 max_buffered_bytes: int = 64 << 20) -> None:
        self.on_drop = on_drop
        self.batch_s = batch_s
        self.max_buffered_bytes = max_buffered_bytes
        self.dropped: dict[str, int] = {}
        self._batch: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, scenario: Scenario, capture_path: Path, legs_path: Path, timeout_s: float = 60.0) -> None:
        """Starts the recorder and waits until it is ready to take exchanges."""
        self._loop = asyncio.get_running_loop()
        # a session of its own: a terminal's Ctrl-C (sent to the whole process group) never reaches it; it
        # ends when told to, or when its stdin ends (the proxy is gone)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harness.shadow.recorder", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, env=child_env())
        self._frame((scenario, str(capture_path), str(legs_path)))
        if await self._answer(timeout_s) is None:
            raise RuntimeError("harness shadow: the recorder process did not start (see its error above)")

    def put(self, item: tuple[Any, ...]) -> None:
        self._batch.append(item)
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self.batch_s, self.send)

    def send(self) -> None:
        """Hands the batch over now."""
        self._timer = None
        batch, self._batch = self._batch, []
        if batch:
            reason = self._frame(("items", batch), bounded=True)
            if reason is not None:
                self.dropped[reason] = self.dropped.get(reason, 0) + len(batch)
                if self.on_drop is not None:
                    for item in batch:
                        self.on_drop(item, reason)

    async def barrier(self, timeout_s: float = 60.0) -> dict[str, Any] | None:
        """Everything put before this call written; returns the cut of the capture and the legs spool
        (files and sizes, recorder.Recorder.barrier), or None where the recorder did not answer."""
        self.send()
        if self._frame(("barrier",)) is not None:
            return None
        return await self._answer(timeout_s)

    async def close(self, timeout_s: float = 120.0) -> dict[str, Any] | None:
        """Hands over what is left, lets the recorder write it all and end; returns its counts (None where
        it did not answer in time: it is then stopped)."""
        if self._timer is not None:
            self._timer.cancel()
        self.send()
        proc = self._proc
        if proc is None:
            return None
        counts = None
        if self._frame(("stop",)) is None:
            assert proc.stdin is not None
            try:
                await asyncio.wait_for(proc.stdin.drain(), timeout_s)
                proc.stdin.close()
                counts = await self._answer(timeout_s)
            except (ConnectionError, asyncio.TimeoutError):
                counts = None
        try:
            await asyncio.wait_for(proc.wait(), 5.0 if counts is not None else 0.1)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        return counts

    def _frame(self, msg: Any, bounded: bool = False) -> str | None:
        """Writes one message without waiting; returns why it could not be, or None. Only `bounded` ones
        (exchanges) are refused over max_buffered_bytes: a barrier or the stop must reach the recorder."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.transport.is_closing() or proc.returncode is not None:
            return RECORDER_GONE
        stdin = proc.stdin
        if bounded and stdin.transport.get_write_buffer_size() > self.max_buffered_bytes:
            return CHANNEL_FULL
        stdin.write(frame(msg))
        return None

    async def _answer(self, timeout_s: float) -> dict[str, Any] | None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)
        except asyncio.TimeoutError:
            return None
        return json.loads(line) if line else None
