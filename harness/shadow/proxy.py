"""The live shadow proxy: every request is answered from the baseline (streamed back unchanged), and a
copy goes to the candidate in the background.

The candidate can never delay, alter or fail the user's answer: the copy goes out on its own
connection pool once the request body is read (both legs leave together, as in a paired replay), and
nothing the user gets waits for it. Copies in flight are bounded (replay.max_in_flight): beyond it a
request is not mirrored and the drop is counted with its reason. Only routes in replay.allow, plus
GET/HEAD/OPTIONS, are mirrored (side-effect safety, as for a replay).

Serving and copying run on the lean HTTP/1.1 path (harness.capture.http11): the hooks below decide
and record, the copy is a callback-driven exchange (no task per request). What is recorded leaves this
process raw (bytes, headers, timestamps) through channel.RecorderChannel: the recorder process
(recorder.py) builds the capture records (redacted, with their shadow id as `request_id`) and the legs
(legs.LegBuilder: output validation, extraction) and writes them. run.py turns both into the run folder.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from ..capture.forward import HOP_BY_HOP, Answer
from ..capture.http11 import KEEPALIVE_TIMEOUT_S, Collect, ProxyServer, Request, Upstream
from ..scenario import Scenario
from ..send_headers import header_overrides
from ..traffic.prepare import is_allowed
from ..traffic.redaction import Redactor
from ..traffic.segments import route_template
from .channel import RecorderChannel

__all__ = ["ShadowStats", "ShadowApp", "CopyHead", "USER_TIMEOUT_S"]

USER_TIMEOUT_S = 60.0  # the user's request to the baseline: a proxy's timeout, not the replay's
_ROUTES_MAX = 4096  # (method, path) pairs whose route and mirror decision are remembered
_NAMES_MAX = 4096  # header names whose fate in the copy is remembered


@dataclass
class ShadowStats:
    requests: int = 0
    mirrored: int = 0
    not_allowed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, str] = field(default_factory=dict)  # shadow id -> reason
    candidate_errors: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0

    def drop(self, rid: str, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.drop_reasons[rid] = reason


class ShadowApp:
    """The proxy's hooks (harness.capture.http11.Hooks) and its two upstreams."""

    def __init__(self, scenario: Scenario, channel: RecorderChannel, max_requests: int | None,
                 stop: asyncio.Event, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> None:
        self.scenario = scenario
        self.channel = channel
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_requests = max_requests
        self.stop = stop
        self.stats = ShadowStats(started_at=time.time())
        self.copies = 0  # in flight
        self._closed = False
        self.passthrough = False  # past the run's end (--keep-serving): answered from the baseline, nothing else
        self.pending = 0  # the run's user requests not answered yet
        self._seq = 0
        self._keep = scenario.replay.max_response_bytes
        self._server: ProxyServer | None = None
        self._candidate: Upstream | None = None
        self._copy_head: CopyHead | None = None
        self._routes: dict[tuple[str, str], tuple[str, bool]] = {}
        # The copy carries the candidate's test credentials (replay.headers, then the target's), as a replay
        # would; the user's request to the baseline passes through as the user sent it.
        self._candidate_headers = header_overrides(scenario)["candidate"]
        self._redactor = Redactor(scenario.traffic.redact)
        # the user's credentials never reach the candidate: only the scenario's test ones, if it sets any
        self.copies_carry_credentials = any(v is not None and self._redactor.header_is_secret(k)
                                            for k, v in self._candidate_headers.items())
        # answers read row by row (output.rows) are checked against the rows the request asked for: the
        # candidate's leg goes to the recorder with its request's body
        self._rows = scenario.output.rows.active(scenario.target_for("candidate").protocol)

    async def start(self, host: str, port: int) -> int:
        replay = self.scenario.replay
        self._candidate = Upstream(self.scenario.target_for("candidate").url, timeout_s=replay.timeout_s,
                                   connect_timeout_s=replay.connect_timeout_s)
        self._copy_head = CopyHead(self._candidate.prefix, self._candidate.netloc, self._candidate_headers,
                                   self._redactor.header_is_secret)
        self._server = ProxyServer(Upstream(self.scenario.target_for("baseline").url, timeout_s=USER_TIMEOUT_S),
                                   self, self._keep, keepalive_timeout_s=self.keepalive_timeout_s,
                                   cancel_on_client_close=False)  # the baseline's leg is judged whole
        return await self._server.start(host, port)

    async def close(self, drain_s: float, serving: bool = False) -> None:
        """Stops serving (answers in flight finish), waits up to drain_s for the copies in flight; those
        still out then are left unrecorded (the run counts them as unfinished). `serving`: the proxy goes on
        answering from the baseline, with nothing mirrored or recorded (passthrough)."""
        if serving:
            self.passthrough = True
        elif self._server is not None:
            await self._server.close()
        deadline = time.monotonic() + drain_s
        # the run's own answers and copies in flight finish (a closed server waits for its answers itself)
        while (self.copies > 0 or (serving and self.pending > 0)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._closed = True
        if self._candidate is not None:
            self._candidate.close()

    async def stop_serving(self) -> None:
        if self._server is not None:
            await self._server.close()

    # -- hooks
    def request(self, req: Request) -> tuple[str, str, bool]:
        if self.passthrough:
            return "", "", False
        self.pending += 1
        self._seq += 1
        rid = f"s{self._seq:09d}"
        stats = self.stats
        stats.requests += 1
        route, allowed = self._route(req.method, req.raw_path)
        mirror = False
        if not allowed:
            stats.not_allowed += 1
        elif self.stop.is_set():
            stats.drop(rid, "not mirrored: the shadow run was stopping")
        elif self.copies >= self.scenario.replay.max_in_flight:
            stats.drop(rid, "not mirrored: copies in flight at replay.max_in_flight")
        else:
            mirror = True
            stats.mirrored += 1
            self._copy(rid, route, req)
            if self.max_requests is not None and stats.mirrored >= self.max_requests:
                self.stop.set()
        return rid, route, mirror

    def _route(self, method: str, raw_path: str) -> tuple[str, bool]:
        """The path's route template and whether replay.allow lets the request be mirrored: both a function
        of the method and the path without its query, remembered for the first _ROUTES_MAX of those."""
        key = (method, raw_path.partition("?")[0])
        got = self._routes.get(key)
        if got is None:
            route = route_template(raw_path)
            got = route, is_allowed(method, raw_path, route, self.scenario.replay.allow)
            if len(self._routes) < _ROUTES_MAX:
                self._routes[key] = got
        return got

    def answered(self, req: Request, token: tuple[str, str, bool], answer: Answer) -> None:
        rid, route, mirror = token
        if not rid:  # served past the run's end: not part of it
            return
        self.pending -= 1
        if self._closed:  # answered after the run's drain gave up on it: left unrecorded, as a copy would be
            return
        # headers as received (bytes): the recorder decodes them, off the serving loop
        self.channel.put(("b", rid, route, mirror, req.method, req.raw_path, req.raw_headers, req.body, req.arrived,
                          answer.status, answer.raw_headers or (), answer.body, answer.size, answer.sent_at,
                          answer.done_at, answer.error, answer.arrivals))

    def _copy(self, rid: str, route: str, req: Request) -> None:
        assert self._candidate is not None and self._copy_head is not None

        def done(answer: Answer) -> None:
            self.copies -= 1
            if self._closed:
                return
            if answer.error is not None:
                self.stats.candidate_errors[answer.error] = self.stats.candidate_errors.get(answer.error, 0) + 1
            self.channel.put(("c", rid, route, req.arrived, answer.status, answer.raw_headers or (), answer.body,
                              answer.size, answer.sent_at, answer.done_at, answer.error, answer.arrivals,
                              req.body if self._rows else b"", req.method))

        self.copies += 1
        # the user's query credentials are masked in the copy, as in a replay
        path = self._redactor.path(req.raw_path) if "?" in req.raw_path else req.raw_path
        self._candidate.send(self._copy_head(req.method, path, req.raw_headers, len(req.body), req.peer),
                             req.body,
                             Collect(self._keep, done), head_only=req.method == "HEAD")


class CopyHead:
    """The head of the candidate's copy, built in bytes from the headers as received (nothing decoded on the
    serving loop): the user's headers in their order, less the hop-by-hop ones, those the scenario sets and
    the user's credentials (`secret`: the redaction's header rule; the copy carries the candidate's test
    credentials instead, as a replay's requests do), then X-Forwarded-For as the baseline's request has it,
    then the scenario's (a null override removes the header)."""

    def __init__(self, prefix: str, netloc: str, overrides: dict[str, str | None],
                 secret: Callable[[str], bool] = lambda name: False) -> None:
        self._prefix = b" " + prefix.encode("latin-1")
        self._host = b" HTTP/1.1\r\nHost: " + netloc.encode("latin-1") + b"\r\n"
        # Expect too: the proxy answered the user's 100-continue itself, and the copy's body goes with its head
        self._drop = frozenset(k.encode() for k in HOP_BY_HOP | {"expect"}) | {k.lower().encode("latin-1") for k in overrides}
        self._extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in overrides.items() if v is not None)
        self._secret = secret
        self._kept: dict[bytes, bool] = {}  # header name (lower case) -> passed on; names repeat across requests
        self._forwarded = b"x-forwarded-for" not in self._drop

    def _keep(self, name: bytes) -> bool:
        kept = self._kept.get(name)
        if kept is None:
            kept = name not in self._drop and not self._secret(name.decode("latin-1"))
            if len(self._kept) < _NAMES_MAX:
                self._kept[name] = kept
        return kept

    def __call__(self, method: str, raw_path: str, raw_headers: list[tuple[bytes, bytes]], body_len: int,
                 peer: str | None = None) -> bytes:
        parts = [method.encode("latin-1"), self._prefix, raw_path.encode("latin-1"), self._host]
        prior = None
        for k, v in raw_headers:
            lk = k.lower()
            if lk == b"x-forwarded-for" and self._forwarded:
                prior = v
            elif self._keep(lk):
                parts += (k, b": ", v, b"\r\n")
        if self._forwarded and (peer or prior is not None):
            parts += (b"X-Forwarded-For: ", b", ".join(x for x in (prior, peer.encode() if peer else None) if x),
                      b"\r\n")
        parts.append(self._extra)
        if body_len or method in ("POST", "PUT", "PATCH"):
            parts.append(b"Content-Length: %d\r\n" % body_len)
        parts.append(b"\r\n")
        return b"".join(parts)
