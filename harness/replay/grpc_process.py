"""The process that owns the gRPC channels of a replay's process (harness.replay.grpc_transport starts it).

Why a process of its own: the replay's process is monkey-patched by gevent (Locust), so every thread grpcio
starts there (the channel's completion-queue poller, grpc.aio's poller) is a greenlet, and a poller blocked
in the completion queue holds its whole thread. grpcio's gevent mode gets around that by handing every
completion-queue poll to gevent's thread pool and starting a poller greenlet whenever a channel goes from
idle to busy: about 0.27 ms of the send loop per call. Here grpcio runs as it is meant to: grpc.aio on an
asyncio loop, its completion queue polled by one real thread. The replay's side of a call is one pickled
frame written to a pipe (the two legs of a pair in one write); the outcomes of a loop turn go back in one
write, to one io watcher. (grpc.aio
rather than the synchronous `future()`: measured here, it costs about 0.07 ms per call started against
0.3-0.5 ms, since `future()` starts a poller thread whenever the channel was idle.)

Frames (harness.frames: a 4-byte length, then a pickle):
- to the process: `("o", channel, settings)` open a channel (one per target), `("c", channel, id, path,
  message, metadata)` a call, `("x", channel)` close a channel: cancel its open calls, report them, close
  it; `("q",)` exit;
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
import gc
import os
import signal
import sys
import time
from typing import Any

from ..frames import FrameReader, frame

__all__ = ["main"]

_CLOSE_WAIT_S = 2.0  # for the cancelled calls' callbacks, once the replay has closed


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
    out = bytearray()
    ended: asyncio.Future[None] = loop.create_future()
    channels: dict[int, _Channel] = {}
    cancelled = grpc.StatusCode.CANCELLED.value[0]

    def flush() -> None:  # once per loop turn: the outcomes of a turn go back in one write
        data = memoryview(bytes(out))
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
        out.extend(frame(message))

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
                chan = channels[message[1]]
                chan.inflight[message[2]] = loop.create_task(run(chan, *message[2:]))
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
        handle(reader.feed(chunk))

    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, readable)
    await ended
    loop.remove_reader(read_fd)
    for number in list(channels):
        await close(number)
    flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
