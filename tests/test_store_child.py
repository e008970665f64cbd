"""The store's writer process (harness.store_writer) driven from the replay's side (harness.store_child), on a
real results.duckdb: it holds the file while it writes, gives it back, and a batch it may have committed
just before it died is written once."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from harness.replay.leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA
from harness.store import _LEG_SELECT, RunStore
from harness.store_child import WriterProcess, WrittenByParent, _wait_exited

pytestmark = pytest.mark.integration


def _store(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path / "results.duckdb")
    store._create_typed("legs", LEG_SCHEMA, _LEG_SELECT)  # the tables as RunStore.create makes them
    store._create_typed("events", EVENT_SCHEMA, "to_timestamp(occurred_at) as occurred_at, kind, detail")
    store._create_typed("resources", RESOURCE_SCHEMA, ", ".join(
        "to_timestamp(sampled_at) as sampled_at" if f.name == "sampled_at" else f.name for f in RESOURCE_SCHEMA))
    return store


def _legs(first: int, n: int) -> pa.Table:
    return pa.Table.from_pylist([{"request_id": f"r{i}", "version": v, "order_idx": i, "intended_at": 1e9 + i,
                                  "send_lag_ms": 0.1} for i in range(first, first + n) for v in ("baseline", "candidate")],
                                schema=LEG_SCHEMA)


def _events(*details: str) -> pa.Table:
    return pa.Table.from_pylist([{"occurred_at": 1e9 + i, "kind": "k", "detail": d} for i, d in enumerate(details)],
                                schema=EVENT_SCHEMA)


def _started(tmp_path: Path) -> tuple[RunStore, WriterProcess]:
    store = _store(tmp_path)
    writer = WriterProcess(store)
    writer.start()
    return store, writer


def _kill(writer: WriterProcess) -> None:
    pid = writer._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    _wait_exited(pid)


def test_events_and_resources_in_flight_are_written_once(tmp_path: Path) -> None:
    store, writer = _started(tmp_path)
    resources = pa.Table.from_pylist([{"sampled_at": 1e9, "version": "baseline", "source": "psutil", "rss_mb": 1.5}],
                                     schema=RESOURCE_SCHEMA)
    writer.write("resources", resources)
    _kill(writer)
    with pytest.raises(WrittenByParent):
        writer.write("resources", pa.concat_tables([resources, resources.set_column(
            1, "sampled_at", pa.array([2e9]))]))
    writer.write("events", _events("a"))
    writer.close()
    assert store.query("select count(*) from resources") == [(2,)]
    assert store.query("select count(*) from events") == [(1,)]
    store.close()


def test_the_writer_holds_the_file_while_it_writes_and_gives_it_back(tmp_path: Path) -> None:
    store, writer = _started(tmp_path)
    with pytest.raises(duckdb.IOException):  # another process holds the file
        duckdb.connect(str(store.path), read_only=True)
    sinks = writer.sinks()
    sinks["legs"](_legs(0, 50))
    sinks["events"](_events("a", "b"))
    writer.close()
    assert store.query("select count(*), count(distinct order_idx) from legs") == [(100, 50)]
    assert store.query("select detail from events order by occurred_at") == [("a",), ("b",)]
    store.close()


def test_a_batch_the_dead_writer_may_have_committed_is_written_once(tmp_path: Path) -> None:
    store, writer = _started(tmp_path)
    writer.write("legs", _legs(0, 10))
    writer.write("events", _events("a"))
    _kill(writer)
    # the writer committed these, but its answer never came: the replay's process sends them again
    with pytest.raises(WrittenByParent, match="writer process failed"):
        writer.write("legs", pa.concat_tables([_legs(0, 10), _legs(10, 5)]))
    assert not writer.alive
    writer.write("legs", _legs(15, 5))
    writer.write("events", _events("a"))  # only the batch in flight is checked: this is an event of its own
    writer.close()
    assert store.query("select count(*), count(distinct (order_idx, version)) from legs") == [(40, 40)]
    assert store.query("select count(*) from events") == [(2,)]
    store.close()


def test_a_failed_insert_ends_the_writer_and_its_rows_stay_with_the_caller(tmp_path: Path) -> None:
    store, writer = _started(tmp_path)
    writer.write("legs", _legs(0, 3))
    wrong = pa.table({"nothing": [1, 2]})
    with pytest.raises(duckdb.Error):  # the writer failed it, and so does this process: the recorder keeps it
        writer.write("legs", wrong)
    assert not writer.alive
    writer.write("legs", _legs(3, 2))
    writer.close()
    assert store.query("select count(*) from legs") == [(10,)]
    store.close()


def test_a_writer_that_hangs_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped writer (SIGSTOP: a stuck disk looks the same from here) does not hold the recorder forever."""
    import harness.store_child as store_child

    monkeypatch.setattr(store_child, "WRITE_TIMEOUT_S", 1.0)
    store, writer = _started(tmp_path)
    writer.write("legs", _legs(0, 5))
    os.kill(writer._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    with pytest.raises(WrittenByParent, match="no answer within 1 s"):
        writer.write("legs", _legs(5, 5))
    assert not writer.alive
    writer.close()
    assert store.query("select count(*), count(distinct (order_idx, version)) from legs") == [(20, 20)]
    store.close()


def test_a_writer_that_stops_reading_with_the_pipe_full_is_replaced(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer stopped before it read a table larger than the pipe holds: handing it over is bounded by the
    same deadline as its answer, and the rows are written here, once."""
    import threading

    import harness.store_child as store_child

    monkeypatch.setattr(store_child, "WRITE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(store_child, "PIPE_BYTES", 4096)
    store, writer = _started(tmp_path)
    os.kill(writer._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    big = _legs(0, 2000)
    assert big.nbytes > 16 * 4096
    raised: list[BaseException] = []

    def write() -> None:
        try:
            writer.write("legs", big)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            raised.append(exc)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(60)  # a hang shows as a thread still alive, not as a test that never ends
    if t.is_alive():
        os.kill(writer._proc.pid, signal.SIGKILL)  # type: ignore[union-attr]  # frees the thread for the next test
        pytest.fail("the hand-over to a stopped writer hangs")
    assert len(raised) == 1 and isinstance(raised[0], WrittenByParent), raised
    assert "it took no data for 1 s" in str(raised[0])
    assert not writer.alive
    writer.close()
    assert store.query("select count(*), count(distinct (order_idx, version)) from legs") == [(4000, 4000)]
    store.close()
