"""Forwarding one request to an upstream through aiohttp and streaming its answer back to the client,
unchanged, as it arrives; a copy of the answer (up to a limit) is kept for the record. Used by
`harness capture --sink --upstream` (the logger receiver's aiohttp routes and the proxy on one port);
the proxy alone and `harness shadow` run on http11.py.

aiohttp on asyncio: a production data path wants a maintained, fast, streaming HTTP/1.1 client and
server in one library, with no monkey patching (the replay's gevent must never be in this process).
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from yarl import URL

from .exchange import header_text

__all__ = ["Answer", "Forwarder", "HOP_BY_HOP", "RESPONSE_DROP"]

# RFC 9110 7.6.1 connection-specific fields, plus those the proxy's own framing sets.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "host", "content-length"})
RESPONSE_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                            "upgrade"})


class Answer:
    """What the upstream answered, as the proxy passed it on. The lean path (http11.py) hands over the
    headers as parsed (`raw_headers`, bytes); `headers` decodes them on first use, off the serving loop
    where the reader is a writer thread."""

    __slots__ = ("status", "_headers", "raw_headers", "body", "size", "sent_at", "done_at", "error", "arrivals")

    def __init__(self, status: int | None, headers: tuple[tuple[str, str], ...] | None, body: bytes, size: int,
                 sent_at: float, done_at: float, error: str | None = None, *,
                 raw_headers: list[tuple[bytes, bytes]] | None = None,
                 arrivals: list[tuple[int, float]] | None = None) -> None:
        self.status = status
        self._headers = headers
        self.raw_headers = raw_headers
        self.body = body  # up to the keep limit
        self.size = size  # bytes passed to the client
        self.sent_at = sent_at
        self.done_at = done_at
        self.error = error  # connect | timeout | reset: the client got 502/504 from the proxy
        # (body bytes so far, wall time) at each read of the body: a stream's token timing (harness shadow)
        self.arrivals = arrivals or []

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        h = self._headers
        if h is None:
            raw = self.raw_headers or ()
            h = self._headers = header_text(raw)
        return h

    def __repr__(self) -> str:
        return (f"Answer(status={self.status}, headers={self.headers}, body={self.body[:60]!r}, size={self.size}, "
                f"error={self.error})")


class Forwarder:
    """One upstream, one connection pool. Use inside a running event loop."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s),
            auto_decompress=False,  # the client gets the upstream's bytes, compressed or not
            # nothing the client did not send is added
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        await self.session.close()

    def _url(self, raw_path: str) -> URL:
        return URL(self.base_url + raw_path, encoded=True)

    async def relay(self, request: web.Request, body: bytes, keep_bytes: int) -> tuple[web.StreamResponse, Answer]:
        """Forwards `request` (its body read already) and streams the answer to the client."""
        # Expect left out: the body is read whole already (aiohttp answered the client's 100-continue), and with
        # it aiohttp's client waits for the upstream's 100 before sending the body, for ever where none comes
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "expect"]
        peer = request.remote
        if peer:
            prior = request.headers.get("X-Forwarded-For")
            headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
        sent = time.time()
        resp: web.StreamResponse | None = None
        kept = bytearray()
        size = 0
        try:
            async with self.session.request(request.method, self._url(request.raw_path), headers=headers,
                                            data=body or None, allow_redirects=False) as up:
                resp = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in RESPONSE_DROP:
                        resp.headers.add(k, v)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    size += len(chunk)
                    if len(kept) <= keep_bytes:
                        kept += chunk[: keep_bytes + 1 - len(kept)]
                    await resp.write(chunk)
                await resp.write_eof()
                return resp, Answer(up.status, tuple(up.headers.items()), bytes(kept), size, sent, time.time())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            kind = error_kind(exc)
            done = time.time()
            if resp is not None and resp.prepared:
                # Too late for a status: the answer had started. The connection is closed so that the client
                # sees a cut answer, never a complete-looking one.
                if request.transport is not None:
                    request.transport.close()
                return resp, Answer(resp.status, tuple(resp.headers.items()), bytes(kept), size, sent, done,
                                    error=kind)
            status = 504 if kind == "timeout" else 502
            return (web.Response(status=status, text=f"upstream {kind}\n"),
                    Answer(status, (), b"", 0, sent, done, error=kind))


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    return "reset"
