"""The process that owns the gRPC channels of a replay's process (harness.replay.grpc_transport starts it).

Why a process of its own: the replay's process is monkey-patched by gevent (Locust), so every thread grpcio
starts there (the channel's completion-queue poller, grpc.aio's poller) is a greenlet, and a poller blocked
in the completion queue holds its whole thread. grpcio's gevent mode gets around that by handing every
completion-queue poll to gevent's thread pool and starting a poller greenlet whenever a channel goes from
idle to busy: about 0.27 ms of the send loop per call. Here grpcio runs as it is meant to: grpc.aio on an
asyncio loop, its completion queue polled by one real thread. The replay hands calls over ahead of their
time (up to grpc_transport's lead_s), the messages of a loop turn in one frame; this process starts each at
its time from a timerfd, the legs of a pair in one callback, so that neither the replay's loop nor the pipe is
between the schedule and the send. The outcomes of a loop turn go back in one frame, to one io watcher. (grpc.aio
rather than the synchronous `future()`: measured here, it costs about 0.07 ms per call started against
0.3-0.5 ms, since `future()` starts a poller thread whenever the channel was idle.)

Frames (harness.frames: a 4-byte length, then a pickle), each the list of messages of one loop turn:
- to the process: `("o", channel, settings)` open a channel (one per target), `("c", channel, id, path,
  message, metadata, at)` a call, started at `at` (epoch seconds, on a timer of this process; None or past:
  at once), `("x", channel)` close a channel: cancel its open and its waiting calls, report them, close it;
  `("q",)` exit;
- from it: `("up", channel)` the channel exists, `("ready", channel)` it is connected, `("d", id,
  sent_at, done_at, code, details, message, trailing_metadata)` a call's end (code 0: OK), `("e", id,
  sent_at, done_at, detail)` a call grpcio refused (nothing was sent), `("b", channel)` the channel is
  closed.
`sent_at` is the epoch time the call is handed to grpcio, `done_at` when its outcome is in.

Run as `python -P -m harness.replay.grpc_process READ_FD WRITE_FD`; it imports grpcio, uvloop, harness.frames
and the standard library only (harness.replay's own package imports nothing, so no gevent),
and ends when its input pipe closes (the replay's process is gone) or on `("q",)`. Ctrl-C is the replay's
to handle.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import heapq
import os
import signal
import sys
import time
from typing import Any

from ..frames import FrameReader, frame

__all__ = ["main"]

_CLOSE_WAIT_S = 2.0  # for the cancelled calls' callbacks, once the replay has closed
_EARLY_S = 0.00002  # a call due within this starts now


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval_sec", ctypes.c_long), ("interval_nsec", ctypes.c_long),
                ("value_sec", ctypes.c_long), ("value_nsec", ctypes.c_long)]


class _Alarm:
    """Calls `fire` at a time on the monotonic clock, to about 0.1 ms: a timerfd (Linux) read by the loop.
    The loop's own timers ride on epoll's millisecond timeout and wake up to 1 ms late; where there is no
    timerfd they are what is used."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Any) -> None:
        self._loop, self._fire = loop, fire
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            self._settime = libc.timerfd_settime
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self._fd = fd
            self._spec = _Itimerspec()
            loop.add_reader(fd, self._readable)

    def set(self, when: float) -> None:
        if self._fd >= 0:
            sec = int(when)
            self._spec.value_sec, self._spec.value_nsec = sec, max(int((when - sec) * 1e9), 1)
            if self._settime(self._fd, 1, ctypes.byref(self._spec), None) == 0:  # TFD_TIMER_ABSTIME
                return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(max(when - time.monotonic(), 0.0), self._fire)

    def _readable(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self._fire()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def main(read_fd: int, write_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop  # noqa: PLC0415 - a declared dependency where it installs: less of each call's CPU

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(read_fd, write_fd))


class _Channel:
    def __init__(self, grpc: Any, settings: dict[str, Any]) -> None:
        aio = grpc.aio
        if settings.get("secure"):
            credentials = grpc.ssl_channel_credentials(root_certificates=settings.get("root_certificates"),
                                                       private_key=settings.get("private_key"),
                                                       certificate_chain=settings.get("certificate_chain"))
            self.channel = aio.secure_channel(settings["target"], credentials, options=settings["options"])
        else:
            self.channel = aio.insecure_channel(settings["target"], options=settings["options"])
        self.timeout_s = settings["timeout_s"]
        self.calls: dict[str, Any] = {}
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.ready: asyncio.Task[None] | None = None

    def call(self, path: str) -> Any:
        call = self.calls.get(path)
        if call is None:  # bytes in, bytes out: the messages are built and read by the replay's process
            call = self.calls[path] = self.channel.unary_unary(path, _registered_method=True)
        return call


async def _serve(read_fd: int, write_fd: int) -> None:
    import grpc  # noqa: PLC0415 - the replay's process imports this module for its frames, not for grpcio
    import grpc.aio  # noqa: PLC0415

    # What the imports made lives as long as the process: out of the collector's sight, so that a full
    # collection (every few thousand calls) does not walk it while calls wait.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    reader = FrameReader()
    out: list[Any] = []
    ended: asyncio.Future[None] = loop.create_future()
    channels: dict[int, _Channel] = {}
    cancelled = grpc.StatusCode.CANCELLED.value[0]
    to_mono = time.monotonic() - time.time()
    waiting: list[tuple[float, int, tuple[Any, ...]]] = []  # (when, id, the call's message): a heap
    armed = [float("inf")]

    def flush() -> None:  # once per loop turn: the outcomes of a turn go back in one frame, one write
        data = memoryview(frame(out))
        out.clear()
        try:
            while data:
                data = data[os.write(write_fd, data):]
        except BrokenPipeError:  # the replay is gone
            if not ended.done():
                ended.set_result(None)

    def send(message: Any) -> None:
        if not out:
            loop.call_soon(flush)
        out.append(message)

    def start(message: tuple[Any, ...]) -> None:
        chan = channels.get(message[1])
        if chan is not None:
            chan.inflight[message[2]] = loop.create_task(run(chan, *message[2:6]))

    def due() -> None:  # the alarm: start what is due, set it for the next
        armed[0] = float("inf")
        horizon = time.monotonic() + _EARLY_S
        while waiting and waiting[0][0] <= horizon:
            start(heapq.heappop(waiting)[2])
        if waiting:
            armed[0] = waiting[0][0]
            alarm.set(armed[0])

    alarm = _Alarm(loop, due)

    async def connected(chan: int, channel: Any) -> None:
        await channel.channel_ready()  # starts connecting now
        send(("ready", chan))

    async def run(chan: _Channel, call_id: int, path: str, message: bytes, metadata: Any) -> None:
        sent_at = time.time()
        try:
            answer = await chan.call(path)(message, timeout=chan.timeout_s, metadata=metadata or None)
        except grpc.aio.AioRpcError as exc:
            trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()))
            send(("d", call_id, sent_at, time.time(), exc.code().value[0], exc.details() or "", b"", trailing))
        except asyncio.CancelledError:
            send(("d", call_id, sent_at, time.time(), cancelled, "cancelled", b"", ()))
        except Exception as exc:  # noqa: BLE001 - grpcio refusing the call (bad metadata): nothing was sent
            send(("e", call_id, sent_at, time.time(), f"{type(exc).__name__}: {exc}"[:300]))
        else:
            send(("d", call_id, sent_at, time.time(), 0, "", answer, ()))
        finally:
            chan.inflight.pop(call_id, None)

    async def close(number: int) -> None:
        chan = channels.pop(number)
        if chan.ready is not None:
            chan.ready.cancel()
        now = time.time()
        for entry in [e for e in waiting if e[2][1] == number]:  # never sent: ended as the open calls are
            waiting.remove(entry)
            send(("d", entry[1], None, now, cancelled, "cancelled", b"", ()))
        heapq.heapify(waiting)
        for task in list(chan.inflight.values()):
            task.cancel()
        if chan.inflight:
            await asyncio.wait(list(chan.inflight.values()), timeout=_CLOSE_WAIT_S)
        await chan.channel.close()
        send(("b", number))

    def handle(messages: list[Any]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "c":
                at = message[6]
                when = at + to_mono if at is not None else 0.0
                if when <= time.monotonic() + _EARLY_S:
                    start(message)
                else:
                    heapq.heappush(waiting, (when, message[2], message))
                    if when < armed[0]:
                        armed[0] = when
                        alarm.set(when)
            elif kind == "o":
                chan = channels[message[1]] = _Channel(grpc, message[2])
                chan.ready = loop.create_task(connected(message[1], chan.channel))
                send(("up", message[1]))
            elif kind == "x":
                loop.create_task(close(message[1]))
            elif kind == "q" and not ended.done():
                ended.set_result(None)

    def readable() -> None:
        try:
            chunk = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:  # the replay is gone
            loop.remove_reader(read_fd)
            if not ended.done():
                ended.set_result(None)
            return
        for messages in reader.feed(chunk):
            handle(messages)

    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, readable)
    await ended
    loop.remove_reader(read_fd)
    for number in list(channels):
        await close(number)
    alarm.close()
    flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
