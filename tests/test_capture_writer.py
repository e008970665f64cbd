"""The capture writer: bounded, never blocking, whole gzip members, rotation, never appending."""
from __future__ import annotations

import gzip
import json
import platform
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.capture.exchange import Exchange, ExchangeRecords, SampleRule
from harness.capture.writer import CaptureWriter


def _identity(item: Any) -> Iterator[dict[str, Any]]:
    yield item


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    release, taken = threading.Event(), threading.Event()

    def slow(item: Any) -> Iterator[dict[str, Any]]:
        taken.set()
        release.wait(10)
        yield item

    w = CaptureWriter(str(tmp_path / "c.jsonl"), slow, max_queue=2)
    w.put({"i": 0})
    assert taken.wait(10)
    for i in range(1, 10):  # the thread holds one, the queue two: the other seven are dropped
        w.put({"i": i})
    assert w.stats.dropped == {"writer queue full": 7}
    release.set()
    stats = w.close()
    assert stats.records_written == 3
    assert [json.loads(x)["i"] for x in Path(stats.files[0]).read_text().splitlines()] == [0, 1, 2]


def test_gzip_members_rotate_by_size_and_never_append(tmp_path: Path) -> None:
    pattern = str(tmp_path / "out" / "c.jsonl.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "c.jsonl.gz").write_bytes(b"left by a killed process")
    w = CaptureWriter(pattern, _identity, rotate_bytes=2000, flush_s=0.01)
    for i in range(300):
        w.put({"i": i, "pad": "x" * (i % 50)})
    stats = w.close()
    assert stats.records_written == 300
    assert str(tmp_path / "out" / "c.jsonl.gz") not in stats.files
    assert stats.files[0] == str(tmp_path / "out" / "c-1.jsonl.gz")
    got = [json.loads(x)["i"] for f in stats.files for x in gzip.decompress(Path(f).read_bytes()).splitlines()]
    assert got == list(range(300))
    assert (tmp_path / "out" / "c.jsonl.gz").read_bytes() == b"left by a killed process"


def test_sampling_is_seeded_and_keeps_a_minimum_per_segment() -> None:
    from harness.scenario import SegmentSpec

    spec = SegmentSpec(name="tenant", kind="header", arg="X-Tenant")

    def kept(seed: int) -> list[int]:
        records = ExchangeRecords(sample=SampleRule(0.1, seed, spec, 5))
        out = []
        for i in range(1000):
            tenant = "rare" if i % 100 == 0 else "common"
            ex = Exchange(1.7e9 + i, "GET", f"/x?i={i}", (("X-Tenant", tenant),), b"")
            out += [i for _ in records(ex)]
        return out

    a, b = kept(1), kept(1)
    assert a == b and a != kept(2)
    assert sum(1 for i in a if i % 100 == 0) >= 5  # the rare tenant keeps its first five at least
    assert 60 < len(a) < 160  # about a tenth of the common tenant's 990


def test_a_body_over_the_limit_is_cut_after_redaction_and_says_so() -> None:
    body = json.dumps({"password": "hunter2", "data": "y" * 500}).encode()
    (rec,) = ExchangeRecords(max_body_bytes=100)(Exchange(1.7e9, "POST", "/x", (), body, 200, 1.0, (), b"{}", 2))
    assert rec["body_truncated"] is True and rec["body_bytes"] == len(body)
    assert "hunter2" not in json.dumps(rec) and len(rec["body"]) == 100


def test_capture_options_are_checked_at_the_edge(tmp_path: Path) -> None:
    import pytest

    from harness.capture.proxy import make_options
    from harness.errors import UsageError

    for kwargs, words in [
        ({"upstream": None}, "--upstream"),
        ({"upstream": "127.0.0.1:8000"}, "http://"),
        ({"listen": "8080"}, "HOST:PORT"),
        ({"sample_fraction": 0.0}, "fraction"),
        ({"out": str(tmp_path / "x.csv")}, ".jsonl"),
        ({"segment": "tenant"}, "--scenario"),
    ]:
        args = {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000", "out": str(tmp_path / "c.jsonl"),
                **kwargs}
        with pytest.raises(UsageError, match=words.replace("+", r"\+").replace(".", r"\.")):
            make_options(**args)  # type: ignore[arg-type]
    ok = make_options(listen="0.0.0.0:9000", upstream="http://127.0.0.1:8000", out=str(tmp_path / "c.jsonl.gz"),
                      rotate_mb=1.5)
    assert (ok.listen_host, ok.listen_port, ok.rotate_bytes) == ("0.0.0.0", 9000, int(1.5 * 1024 * 1024))


def test_inline_writer_appends_when_due_at_a_barrier_and_when_idle(tmp_path: Path) -> None:
    import time

    path = tmp_path / "c.jsonl.gz"
    w = CaptureWriter(str(path), _identity, flush_s=0.05, inline=True)
    w.put({"i": 0})  # converted at once, appended at the next flush
    name, size = w.barrier()
    assert name == str(path) and size == path.stat().st_size > 0
    assert [json.loads(x)["i"] for x in gzip.decompress(path.read_bytes()).splitlines()] == [0]
    w.put({"i": 1})  # nothing more is put: the idle flusher appends it within flush_s
    deadline = time.monotonic() + 5
    while path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [json.loads(x)["i"] for x in gzip.decompress(path.read_bytes()).splitlines()] == [0, 1]
    for i in range(2, 500):
        w.put({"i": i})
    stats = w.close()
    assert stats.records_written == 500 and stats.files == [str(path)]
    assert [json.loads(x)["i"] for x in gzip.decompress(path.read_bytes()).splitlines()] == list(range(500))


def test_record_timestamps_are_the_text_datetime_writes() -> None:
    import math
    import random
    from datetime import datetime, timezone

    from harness.traffic.convert import iso_utc

    rng = random.Random(7)
    edges = (0.0, 1.5, 1.7e9, 1.7e9 + 0.9999995, 1.7e9 + 0.0000005, 1.7e9 + 0.0000015, 1_790_000_000.9999999,
             -0.25, -1.0000005)
    stamps = [*edges, *(rng.uniform(1e9, 2e9) for _ in range(5000)),
              *(math.floor(rng.uniform(1e9, 2e9)) + rng.choice((0.9999995, 0.5e-6, 2.5e-6, 0.99999949))
                for _ in range(5000))]
    for ts in stamps:  # out of order too: the cached second must follow
        assert iso_utc(ts) == datetime.fromtimestamp(ts, timezone.utc).isoformat(), ts


def _members(*records: list[dict[str, Any]]) -> bytes:
    """Whole gzip members, one per flush, as the writer appends them."""
    return b"".join(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in flush), mtime=0)
                    for flush in records)


def test_a_file_a_killed_writer_left_cut_is_cut_back_by_the_next_writer(tmp_path: Path) -> None:
    """A kill can stop a write part-way: the next writer of the pattern cuts the unfinished flush off (one
    line says so) and writes its own file; every whole flush before it stays."""
    import io

    whole = _members([{"i": 0}, {"i": 1}], [{"i": 2}])
    cut = _members([{"i": 3}] * 50)[:-30]
    old = tmp_path / "prod-20261205T01.jsonl.gz"
    old.write_bytes(whole + cut)
    err = io.StringIO()
    w = CaptureWriter(str(tmp_path / "prod-%Y%m%dT%H.jsonl.gz"), _identity, stderr=err)
    w.put({"i": 9})
    stats = w.close()
    assert old.read_bytes() == whole
    assert [json.loads(x)["i"] for x in gzip.decompress(old.read_bytes()).splitlines()] == [0, 1, 2]
    assert f"{old} ended inside a flush" in err.getvalue() and f"{len(cut)} bytes left out" in err.getvalue()
    assert stats.files and Path(stats.files[0]) != old  # never appended to

    plain = tmp_path / "plain.jsonl"  # the same for plain JSONL: an unfinished line
    plain.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": ')
    CaptureWriter(str(plain), _identity, stderr=io.StringIO()).close()
    assert plain.read_bytes() == b'{"i": 0}\n{"i": 1}\n'


def test_a_live_writer_s_file_and_a_corrupt_one_are_left_alone(tmp_path: Path) -> None:
    """A file another live writer holds may end inside the flush it is writing: not cut. A file corrupt
    before its end is no kill's doing: left for the readers to report."""
    import io

    live = CaptureWriter(str(tmp_path / "a.jsonl.gz"), _identity, stderr=io.StringIO())
    live.put({"i": 0})
    live.barrier()
    held = Path(live.stats.files[0])
    with held.open("ab") as f:  # as if its next flush were half written
        f.write(_members([{"i": 1}] * 20)[:-10])
    size = held.stat().st_size
    err = io.StringIO()
    CaptureWriter(str(tmp_path / "a.jsonl.gz"), _identity, stderr=err).close()
    assert held.stat().st_size == size and err.getvalue() == ""
    live.close()

    corrupt = tmp_path / "b.jsonl.gz"
    data = bytearray(_members([{"i": 0}], [{"i": 1}] * 20))
    data[30:40] = b"\xff" * 10
    corrupt.write_bytes(bytes(data))
    CaptureWriter(str(corrupt), _identity, stderr=io.StringIO()).close()
    assert corrupt.read_bytes() == bytes(data)


_HEAP_CHURN = """
import resource, sys, threading, orjson
from harness.capture.heap import keep_freed_heap
applied = keep_freed_heap() if sys.argv[1] == "keep" else None
rec = {"ts": "2026-12-05T09:00:00.000000+00:00", "method": "POST", "path": "/score",
       "headers": {"Host": "x", "Content-Type": "application/json"}, "body": {"inputs": [1, 2, 3]}}

def flushes():  # on a thread of its own, as the capture writer's: glibc gives it a heap of its own
    for _ in range(10):
        docs = [orjson.loads(orjson.dumps(rec)) for _ in range(9000)]  # half a second's records at 18,000/s
        data = b"".join(orjson.dumps(d) for d in docs)  # the flush's batch
        del docs, data

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = threading.Thread(target=flushes)
t.start()
t.join()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_heap_spares_the_page_faults_of_records_built_and_freed_each_flush() -> None:
    """With glibc's defaults the heap a flush's records grew is handed back when they are freed and faulted
    in again by the next flush (about 11,000 faults a flush here); kept, the pages are faulted in once."""
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _HEAP_CHURN, mode], capture_output=True, text=True, check=True)
        applied, n = out.stdout.split()
        return applied, int(n)

    _, default = faults("default")
    applied, kept = faults("keep")
    assert applied == "True"
    assert kept * 3 < default, (kept, default)
