"""The shadow run's recorder: a process of its own that turns the proxy's raw exchanges into the capture
records and the leg rows, and writes them (the capture and the legs spool, harness.capture.writer):

    python -m harness.shadow.recorder     (started by channel.py; not a command for users)

Why a process: building a leg (output reading, validation against the scenario's schemas, the masked
excerpt) and a capture record (redaction, the record, orjson, gzip) is Python work that holds the GIL.
In the proxy's process it made the serving loop wait for the GIL in bursts (py-spy: the tail of the
user's answer at 1,000 requests/s); here it costs the proxy nothing but the hand-over.

Each answer's JSON is parsed once: the baseline's answer is read for its leg, and the capture record of
the same exchange takes that parse, masked (Exchange.response_doc).

Protocol (stdin, from the proxy): frames (harness.frames); the first is
(scenario, capture path, legs path), then ("items", [item, ...]), ("barrier",) and ("stop",). Items are
plain tuples (channel.py builds them). Stdout carries one JSON line per answer: {"ready": true} once
started, the cut of each barrier, the counts at the end. It runs in a session of its own and ignores
SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group): the proxy stops it with
("stop",), and an end of stdin (the proxy died) ends it the same way, with everything it was given
written.
"""
from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO, Iterable, TextIO

from ..traffic.prepare import batch_size_of
from ..capture.exchange import Exchange, ExchangeRecords, header_text, request_doc
from ..capture.writer import CaptureWriter
from ..frames import background_child, read_frame
from ..scenario import Scenario
from ..send_headers import credential_values, header_overrides
from ..traffic.redaction import PARSE, masking_order
from .legs import LegBuilder

__all__ = ["Recorder", "main"]

CAPTURE_MAX_BODY_BYTES = 1 << 24


_READ = (b"content-type", b"content-encoding")
_PENDING_MAX = 65536  # items of a pair waiting for the other one
_PENDING_BYTES = 256 << 20  # and the candidate answers they hold


def _content_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """The answer headers every leg and capture record reads (its type, and its coding, which is undone
    before anything reads the body), decoded."""
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() in _READ)


def _one(record: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return (record,)


class Recorder:
    def __init__(self, scenario: Scenario, capture_path: str, legs_path: str) -> None:
        self.records = ExchangeRecords(scenario.traffic.redact, max_body_bytes=CAPTURE_MAX_BODY_BYTES)
        self.builder = LegBuilder(scenario)
        self.max_bytes = scenario.replay.max_response_bytes
        # literal paths: the writer's strftime must leave them as they are
        self.capture = CaptureWriter(capture_path.replace("%", "%%"), _one, inline=True)
        self.legs = CaptureWriter(legs_path.replace("%", "%%"), _one, inline=True)
        self.dropped: dict[str, int] = {}
        # The candidate's answer is masked by the values of its request's secrets, which come with the
        # baseline's item: a copy's item that arrives first waits for it (and a mirrored request's secrets wait
        # for its copy). Both are bounded by the copies in flight.
        self._waiting: dict[str, tuple[Any, ...]] = {}
        self._waiting_bytes = 0
        self._secrets: dict[str, tuple[str, ...]] = {}
        # the candidate's test credentials (replay.headers, the targets' headers), masked as a replay masks them
        self._test = credential_values(header_overrides(scenario))

    def handle(self, item: tuple[Any, ...]) -> None:
        try:
            if item[0] == "b":
                rid, mirror = item[1], item[3]
                secrets: tuple[str, ...] | None = None
                try:
                    secrets = self._baseline(*item[1:])
                finally:  # a copy that waited for this item is recorded whatever became of it
                    held = self._unwait(rid)
                    if held is not None:
                        self._candidate(held, secrets)
                    elif mirror and secrets is not None:
                        self._secrets[rid] = secrets
            elif item[1] in self._secrets:
                self._candidate(item, self._secrets.pop(item[1]))
            else:
                self._waiting[item[1]] = item
                self._waiting_bytes += len(item[6])
            # a pair whose other item never comes (dropped by a full channel) is forgotten, oldest first
            while len(self._secrets) > _PENDING_MAX:
                self._secrets.pop(next(iter(self._secrets)))
            while self._waiting and (len(self._waiting) > _PENDING_MAX or self._waiting_bytes > _PENDING_BYTES):
                self._candidate(self._unwait(next(iter(self._waiting))), None)
        except Exception as exc:  # noqa: BLE001 - one exchange that cannot be recorded must not end the run
            self._drop(exc)

    def _unwait(self, rid: str) -> Any:
        item = self._waiting.pop(rid, None)
        if item is not None:
            self._waiting_bytes -= len(item[6])
        return item

    def _drop(self, exc: Exception) -> None:
        reason = f"record could not be built: {type(exc).__name__}"
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _candidate(self, item: tuple[Any, ...], secrets: tuple[str, ...] | None) -> None:
        """The candidate's leg; `secrets` None: its request's secret values are unknown, so the leg keeps no
        excerpt of the answer (everything else is recorded)."""
        _, rid, route, arrived, status, rh, rb, size, sent, done, error, arrivals, request_body, method = item
        if secrets is not None:
            secrets = masking_order(secrets + self._test)
        headers = header_text(rh) if self.builder.reads_headers["candidate"] else _content_headers(rh)
        self.legs.put(self.builder.leg(rid, "candidate", route, arrived, sent, done, status, error,
                                       headers, rb, size, self.max_bytes, arrivals,
                                       batch_size_of(request_body, self.builder.scenario), secrets, method))

    def _baseline(self, rid: str, route: str, mirror: bool, method: str, path: str,
                  raw_headers: list[tuple[bytes, bytes]], body: bytes, arrived: float, status: int | None,
                  raw_rh: list[tuple[bytes, bytes]], rb: bytes, size: int, sent: float, done: float,
                  error: str | None, arrivals: list[tuple[int, float]] = ()  # type: ignore[assignment]
                  ) -> tuple[str, ...]:
        """Records the baseline's leg and the capture record; returns the request's secret values."""
        # the answer's headers decoded whole only where the baseline's reader reads them
        headers = header_text(raw_headers)
        rh = header_text(raw_rh) if self.builder.reads_headers["baseline"] else _content_headers(raw_rh)
        req_doc = request_doc(body)  # parsed once: for its secrets, then masked for its capture record
        secrets = self.records.redactor.secret_values(headers, path, body, req_doc)
        masked = masking_order(secrets + self._test)
        doc: Any = PARSE
        if mirror:
            row, doc = self.builder.leg_and_doc(rid, "baseline", route, arrived, sent, done, status, error, rh, rb,
                                                size, self.max_bytes, arrivals, batch_size_of(body, self.builder.scenario),
                                                masked, method)
            self.legs.put(row)
        ex = Exchange(arrived, method, path, headers, body, status, (done - arrived) * 1000.0, rh, rb, size,
                      error, meta={"request_id": rid}, response_doc=doc, secrets=masked, request_doc=req_doc)
        for rec in self.records(ex):
            self.capture.put(rec)
        return secrets

    def barrier(self) -> dict[str, Any]:
        # the legs are cut first: every leg in the cut has its request in the capture cut after it
        legs_file, legs_size = self.legs.barrier()
        capture_file, capture_size = self.capture.barrier()
        return {"legs": legs_file, "legs_size": legs_size, "capture": capture_file, "capture_size": capture_size}

    def close(self) -> dict[str, Any]:
        # copies whose request's own answer was never recorded (the run ended first): no excerpt
        for item in self._waiting.values():
            try:
                self._candidate(item, None)
            except Exception as exc:  # noqa: BLE001
                self._drop(exc)
        self._waiting.clear()
        self._waiting_bytes = 0
        out: dict[str, Any] = {"dropped": self.dropped}
        for name, w in (("capture", self.capture), ("legs", self.legs)):
            s = w.close()
            out[name] = {"records_written": s.records_written, "dropped": s.dropped, "error": s.error}
        return out


def _reply(out: TextIO, msg: dict[str, Any]) -> None:
    try:
        out.write(json.dumps(msg) + "\n")
        out.flush()
    except (BrokenPipeError, ValueError):  # the proxy is gone: what was given is written all the same
        pass


def main(inp: BinaryIO, out: TextIO) -> None:
    # SCHED_BATCH: the proxy wakes this process with every hand-over, and under the normal policy the woken
    # recorder took the proxy's CPU at once (the proxy's loop stalled 1-3 ms at a tenth of its hand-overs, on
    # 2 cores at 1,000 requests/s)
    background_child()
    config = read_frame(inp)
    if config is None:
        return
    rec = Recorder(*config)
    _reply(out, {"ready": True})
    while (msg := read_frame(inp)) is not None and msg[0] != "stop":
        if msg[0] == "items":
            for item in msg[1]:
                rec.handle(item)
        elif msg[0] == "barrier":
            _reply(out, rec.barrier())
    _reply(out, rec.close())


if __name__ == "__main__":
    main(sys.stdin.buffer, sys.stdout)
