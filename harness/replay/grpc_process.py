"""The process that owns a gRPC target's channel (harness.replay.grpc_transport starts one per target).

Why a process of its own: the replay's process is monkey-patched by gevent (Locust), so every thread grpcio
starts there (the channel's completion-queue poller, grpc.aio's poller) is a greenlet, and a poller blocked
in the completion queue holds its whole thread. grpcio's gevent mode gets around that by handing every
completion-queue poll to gevent's thread pool and starting a poller greenlet whenever a channel goes from
idle to busy: about 0.27 ms of the send loop per call. Here grpcio runs as it is meant to: grpc.aio on an
asyncio loop, its completion queue polled by one real thread. The replay's side of a call is one pickled
frame written to a pipe; the outcomes of a loop turn go back in one write, to one io watcher. (grpc.aio
rather than the synchronous `future()`: measured here, it costs about 0.07 ms per call started against
0.3-0.5 ms, since `future()` starts a poller thread whenever the channel was idle.)

Frames (a 4-byte little-endian length, then a pickle; both ends are this package, same interpreter):
- to the process: the settings (first frame: a dict), `("c", id, path, message, metadata)` a call,
  `("x",)` close: cancel what is open, report it, exit;
- from it: `("up",)` once the channel exists, `("ready",)` once it is connected, `("d", id, sent_at,
  done_at, code, details, message, trailing_metadata)` a call's end (code 0: OK), `("e", id, sent_at,
  done_at, detail)` a call grpcio refused (nothing was sent), `("b",)` closed.
`sent_at` is the epoch time the call is handed to grpcio, `done_at` when its outcome is in.

Run as `python grpc_process.py READ_FD WRITE_FD`; it imports grpcio and the standard library only, and ends
when its input pipe closes (the replay's process is gone) or on `("x",)`. Ctrl-C is the replay's to handle.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
import time
from typing import Any

__all__ = ["frame", "FrameReader", "main"]

_HEAD = struct.Struct("<I")
_CLOSE_WAIT_S = 2.0  # for the cancelled calls' callbacks, once the replay has closed


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


class FrameReader:
    """Frames out of a byte stream read in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _HEAD.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            out.append(pickle.loads(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return out


def main(read_fd: int, write_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(read_fd, write_fd))


async def _serve(read_fd: int, write_fd: int) -> None:
    import grpc  # noqa: PLC0415 - the replay's process imports this module for its frames, not for grpcio
    import grpc.aio  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    reader = FrameReader()
    out = bytearray()
    ended = loop.create_future()

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

    settings: dict[str, Any] | None = None
    pending: list[Any] = []
    while settings is None:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return
        got = reader.feed(chunk)
        if got:
            settings, pending = got[0], got[1:]
    if settings.get("secure"):
        credentials = grpc.ssl_channel_credentials(root_certificates=settings.get("root_certificates"),
                                                   private_key=settings.get("private_key"),
                                                   certificate_chain=settings.get("certificate_chain"))
        channel = grpc.aio.secure_channel(settings["target"], credentials, options=settings["options"])
    else:
        channel = grpc.aio.insecure_channel(settings["target"], options=settings["options"])
    timeout_s = settings["timeout_s"]
    calls: dict[str, Any] = {}
    inflight: dict[int, asyncio.Task[None]] = {}
    cancelled = grpc.StatusCode.CANCELLED.value[0]

    async def connected() -> None:
        await channel.channel_ready()  # starts connecting now
        send(("ready",))

    async def run(call_id: int, path: str, message: bytes, metadata: Any) -> None:
        call = calls.get(path)
        if call is None:  # bytes in, bytes out: the messages are built and read by the replay's process
            call = calls[path] = channel.unary_unary(path, _registered_method=True)
        sent_at = time.time()
        try:
            answer = await call(message, timeout=timeout_s, metadata=metadata or None)
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
            inflight.pop(call_id, None)

    async def close() -> None:
        ready.cancel()
        for task in list(inflight.values()):
            task.cancel()
        if inflight:
            await asyncio.wait(list(inflight.values()), timeout=_CLOSE_WAIT_S)
        await channel.close()
        send(("b",))
        await asyncio.sleep(0)  # the flush
        if not ended.done():
            ended.set_result(None)

    def handle(messages: list[Any]) -> None:
        for message in messages:
            if message[0] == "c":
                inflight[message[1]] = loop.create_task(run(*message[1:]))
            elif message[0] == "x":
                loop.remove_reader(read_fd)
                loop.create_task(close())
                return

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

    ready = loop.create_task(connected())
    send(("up",))
    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, readable)
    handle(pending)
    await ended


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
