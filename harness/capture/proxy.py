"""`harness capture`: a reverse proxy in front of a model server that writes what passes through it.

The client gets the upstream's answer unchanged (status, headers, bytes, streamed as they arrive); the
capture happens after the answer has gone, in the writer's thread (writer.py). An upstream that is down
answers 502 (504 on a timeout) as any proxy would, and the record says so (`production_error`).
Unparseable HTTP from a client is refused with 400 and counted.

The proxy alone runs on the lean HTTP/1.1 path (http11.py: asyncio Protocols and httptools); with the
KServe logger receiver (`--sink`) the port serves aiohttp routes, and the proxy behind it aiohttp's
client (forward.py).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Iterator, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..scenario import RedactConfig
from .exchange import DEFAULT_MAX_BODY_BYTES, Exchange, ExchangeRecords, SampleRule
from .forward import Answer, Forwarder
from .heap import keep_freed_heap
from .http11 import CLIENT_CLOSED, KEEPALIVE_TIMEOUT_S, MAX_REQUEST_BYTES, ProxyServer, Request, Upstream
from .writer import CaptureWriter

__all__ = ["CaptureOptions", "CaptureStats", "run_capture", "serve", "parse_listen", "summary_lines"]

T = TypeVar("T")



@dataclass(frozen=True)
class CaptureOptions:
    listen_host: str
    listen_port: int
    upstream: str | None  # None: only the logger sink (--sink) is served
    out: str  # strftime pattern of the output files (UTC)
    redact: RedactConfig = RedactConfig()
    sample: SampleRule = SampleRule()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rotate_bytes: int | None = None
    timeout_s: float = 60.0
    sink: bool = False  # serve POST /kserve-logger (KServe inference logger CloudEvents)
    duration_s: float | None = None
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S  # idle client connections closed after it (0: never)


@dataclass
class CaptureStats:
    requests: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    client_closed: int = 0  # answers cut as their client left (the upstream's request cut with them)
    bad_http: int = 0
    records_written: int = 0
    sampled_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    error: str | None = None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class BadRequestCounter(logging.Handler):
    """aiohttp answers unparseable HTTP with 400 itself and logs it; this counts those log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.count += 1
        elif record.levelno >= logging.WARNING:  # anything else aiohttp reports is shown, never swallowed
            print(f"harness capture: {record.getMessage()}: {exc!r}", file=sys.stderr, flush=True)


def build_app(options: CaptureOptions, writer: CaptureWriter, stats: CaptureStats) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, handler_args={"max_field_size": 65536})
    forwarder: list[Forwarder] = []

    async def start(_app: web.Application) -> None:
        if options.upstream:
            forwarder.append(Forwarder(options.upstream, timeout_s=options.timeout_s))

    async def stop(_app: web.Application) -> None:
        for f in forwarder:
            await f.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        body = await request.read()
        stats.requests += 1
        resp, answer = await forwarder[0].relay(request, body, options.max_body_bytes)
        if answer.error is not None:
            stats.upstream_errors[answer.error] = stats.upstream_errors.get(answer.error, 0) + 1
        writer.put(Exchange(arrived, request.method, request.raw_path, tuple(request.headers.items()), body,
                            answer.status, (answer.done_at - arrived) * 1000.0, answer.headers, answer.body,
                            answer.size, answer.error))
        return resp

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    if options.sink:
        from .logger_sink import add_sink_routes

        add_sink_routes(app, writer, stats)
    if options.upstream:
        app.router.add_route("*", "/{tail:.*}", handle)
    return app


def lean_records(records: ExchangeRecords) -> Callable[[tuple[Request, Answer]], Iterator[dict[str, Any]]]:
    """The lean path's writer conversion: the serving loop hands over (request, answer) as they are, and
    the writer thread decodes their headers and builds the Exchange and its record."""
    def convert(item: tuple[Request, Answer]) -> Iterator[dict[str, Any]]:
        req, answer = item
        return records(Exchange(req.arrived, req.method, req.raw_path, tuple(req.headers), req.body, answer.status,
                                (answer.done_at - req.arrived) * 1000.0, answer.headers, answer.body, answer.size,
                                answer.error))

    return convert


class _CaptureHooks:
    """The lean path's hooks: count the request, hand the exchange to the writer once the answer has gone."""

    def __init__(self, writer: CaptureWriter, stats: CaptureStats) -> None:
        self.writer, self.stats = writer, stats

    def request(self, req: Request) -> None:
        self.stats.requests += 1

    def answered(self, req: Request, token: None, answer: Answer) -> None:
        if answer.error == CLIENT_CLOSED:
            self.stats.client_closed += 1
        elif answer.error is not None:
            self.stats.upstream_errors[answer.error] = self.stats.upstream_errors.get(answer.error, 0) + 1
        self.writer.put((req, answer))


async def serve(options: CaptureOptions, echo: Callable[[str], None] = print,
                stop: asyncio.Event | None = None) -> CaptureStats:
    stats = CaptureStats()
    records = ExchangeRecords(options.redact, options.sample, options.max_body_bytes)
    if options.upstream and not options.sink:
        return await _serve_lean(options, echo, stop, stats, records,
                                 CaptureWriter(options.out, lean_records(records), rotate_bytes=options.rotate_bytes))
    writer = CaptureWriter(options.out, records, rotate_bytes=options.rotate_bytes)
    bad = BadRequestCounter()
    server_log = logging.getLogger("aiohttp.server")
    server_log.addHandler(bad)
    server_log.propagate = False  # counted, not printed as tracebacks
    server_log.setLevel(logging.DEBUG)  # aiohttp logs a bad method on a first request at debug level
    runner = web.AppRunner(build_app(options, writer, stats), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.listen_host, options.listen_port, backlog=1024, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001 - the bound port, for port 0
        port = sockets[0].getsockname()[1] if sockets else options.listen_port
        await _announce_and_wait(options, port, echo, stop)
    finally:
        await runner.cleanup()
        server_log.removeHandler(bad)
        _closed(stats, records, writer)
        stats.bad_http += bad.count
    return stats


async def _serve_lean(options: CaptureOptions, echo: Callable[[str], None], stop: asyncio.Event | None,
                      stats: CaptureStats, records: ExchangeRecords, writer: CaptureWriter) -> CaptureStats:
    assert options.upstream is not None
    server: ProxyServer | None = None
    try:
        server = ProxyServer(Upstream(options.upstream, timeout_s=options.timeout_s), _CaptureHooks(writer, stats),
                             options.max_body_bytes, keepalive_timeout_s=options.keepalive_timeout_s)
        port = await server.start(options.listen_host, options.listen_port)
        await _announce_and_wait(options, port, echo, stop)
    finally:
        if server is not None:
            await server.close()
            stats.bad_http += server.bad_http
        _closed(stats, records, writer)
    return stats


async def _announce_and_wait(options: CaptureOptions, port: int, echo: Callable[[str], None],
                             stop: asyncio.Event | None) -> None:
    echo(f"listening on http://{options.listen_host}:{port}"
         + (f" -> {options.upstream}" if options.upstream else "") + f"; capture to {options.out}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if options.duration_s is not None:
        loop.call_later(options.duration_s, stop.set)
    await stop.wait()


def _closed(stats: CaptureStats, records: ExchangeRecords, writer: CaptureWriter) -> None:
    w = writer.close()
    stats.records_written, stats.files, stats.dropped, stats.error = w.records_written, w.files, w.dropped, w.error
    stats.sampled_out = records.sampled_out


def run_capture(options: CaptureOptions, echo: Callable[[str], None] = print) -> CaptureStats:
    """Serves until SIGINT/SIGTERM (or the duration); returns what was captured."""
    def say(msg: str) -> None:
        echo(msg)
        sys.stdout.flush()

    keep_freed_heap()
    return run_loop(serve(options, say))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop where it is installed (a faster event loop: libuv; the same semantics)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def summary_lines(stats: CaptureStats) -> list[str]:
    lines = [f"requests: {stats.requests}; records written: {stats.records_written}; "
             f"sampled out: {stats.sampled_out}; unparseable HTTP refused: {stats.bad_http}"]
    if stats.upstream_errors:
        lines.append("upstream errors: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.upstream_errors.items())))
    if stats.client_closed:
        lines.append(f"clients that left mid-answer: {stats.client_closed} (their upstream requests cut)")
    if stats.dropped:
        lines.append("records dropped: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.dropped.items())))
    if stats.error:
        lines.append(f"capture stopped: {stats.error}")
    lines += [f"file: {f}" for f in stats.files]
    return lines


def make_options(*, listen: str, upstream: str | None, out: str, scenario_path: str | None = None,
                 sample_fraction: float = 1.0, seed: int = 0, segment: str | None = None, min_per_segment: int = 0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, rotate_mb: float | None = None,
                 timeout_s: float = 60.0, sink: bool = False, duration_s: float | None = None,
                 keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> CaptureOptions:
    """The command line's values, checked, as CaptureOptions: redaction rules and segments come from the
    scenario when one is given."""
    from ..errors import UsageError
    from ..scenario import load_scenario

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"harness capture: {exc}") from None
    if upstream is None and not sink:
        raise UsageError("harness capture: give --upstream URL (a proxy), --sink (the KServe logger receiver), or both")
    if upstream is not None and not upstream.startswith(("http://", "https://")):
        raise UsageError(f"harness capture: --upstream {upstream!r}: expected http://HOST:PORT")
    if keepalive_timeout_s < 0:
        raise UsageError("harness capture: --keepalive-timeout must be >= 0 (0: never)")
    if not 0.0 < sample_fraction <= 1.0:
        raise UsageError(f"harness capture: --sample {sample_fraction}: expected a fraction in (0, 1]")
    if not out.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        raise UsageError(f"harness capture: --out {out!r}: the capture is JSONL: end it in .jsonl or .jsonl.gz")
    redact = RedactConfig()
    spec = None
    if scenario_path is not None:
        scenario = load_scenario(scenario_path)
        redact = scenario.traffic.redact
        if segment is not None:
            found = [s for s in scenario.segments if s.name == segment]
            if not found:
                raise UsageError(f"harness capture: --segment {segment!r} is not a segment of {scenario_path} "
                                 f"(it has: {', '.join(s.name for s in scenario.segments) or 'none'})")
            spec = found[0]
    elif segment is not None:
        raise UsageError("harness capture: --segment needs --scenario (segments are defined there)")
    if min_per_segment and spec is None:
        raise UsageError("harness capture: --min-per-segment needs --segment NAME")
    return CaptureOptions(listen_host=host, listen_port=port, upstream=upstream, out=out, redact=redact,
                          sample=SampleRule(sample_fraction, seed, spec, min_per_segment), max_body_bytes=max_body_bytes,
                          rotate_bytes=int(rotate_mb * 1024 * 1024) if rotate_mb else None, timeout_s=timeout_s,
                          sink=sink, duration_s=duration_s, keepalive_timeout_s=keepalive_timeout_s)
