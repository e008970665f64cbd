"""The traffic stage: time order, window, sampling (stratified, seeded), max_requests, loops, warm-up,
side-effect safety; every record accounted for."""
from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from harness.scenario import scenario_from_dict
from harness.traffic.prepare import prepare_traffic
from replay_helpers import write_capture

T0 = 1_700_000_000.0


def capture(tmp_path: Path, n: int = 1000) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        tier = "rare" if i % 50 == 0 else "common"
        recs.append({"ts": T0 + i * 0.1, "method": "POST" if i % 100 else "DELETE", "path": f"/v1/items/{i}/score",
                     "headers": {"X-Tier": tier}, "body": {"i": i}})
    recs[10], recs[11] = recs[11], recs[10]
    recs.insert(500, "{not json")
    return write_capture(tmp_path / "c.jsonl", recs)


def prepared(tmp_path: Path, **traffic: object):
    cap = capture(tmp_path)
    s = scenario_from_dict({"name": "t", "traffic": {"path": str(cap), **traffic},
                            "segments": {"tier": {"header": "X-Tier"}},
                            "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
                            "replay": {"allow": ["POST /v1/items/*/score"]}})
    p = prepare_traffic(s, tmp_path / "work")
    con = duckdb.connect()
    rows = con.execute(f"select * from read_parquet('{p.schedule_path}') order by order_idx").fetchall()
    cols = [d[0] for d in con.description]
    return p, [dict(zip(cols, r)) for r in rows]


def test_everything_is_accounted_for_and_in_time_order(tmp_path: Path) -> None:
    p, rows = prepared(tmp_path)
    assert p.records_read == 1001 and p.bad_records == 1
    assert p.skipped == {"not allowed: DELETE changes state (add it to replay.allow if it is safe to replay)": 10}
    assert p.replayed == 990 == len(rows)
    assert p.records_read == p.replayed + sum(p.skipped.values()) + p.bad_records
    offsets = [r["offset_s"] for r in rows]
    assert offsets == sorted(offsets) and offsets[0] == 0.0
    # line 1 is a DELETE (skipped); lines 11 and 12 were written out of time order
    assert [r["source_line"] for r in rows[9:12]] == [12, 11, 13]  # replayed in time order, not file order


def test_window_and_max_requests(tmp_path: Path) -> None:
    p, rows = prepared(tmp_path, window={"from_s": 10, "to_s": 20}, max_requests=50)
    assert len(rows) == 50 and rows[0]["offset_s"] == 0.0  # the window's start is time zero
    assert p.skipped["outside traffic.window"] > 800 and p.skipped["beyond traffic.max_requests"] > 0


def test_sampling_is_deterministic_and_keeps_rare_strata(tmp_path: Path) -> None:
    a, rows_a = prepared(tmp_path / "a", sample={"fraction": 0.1, "seed": 3, "stratify_by": "tier", "min_per_stratum": 15})
    b, rows_b = prepared(tmp_path / "b", sample={"fraction": 0.1, "seed": 3, "stratify_by": "tier", "min_per_stratum": 15})
    c, rows_c = prepared(tmp_path / "c", sample={"fraction": 0.1, "seed": 4, "stratify_by": "tier", "min_per_stratum": 15})
    ids = lambda rows: [r["request_id"] for r in rows]  # noqa: E731
    assert ids(rows_a) == ids(rows_b) and ids(rows_a) != ids(rows_c)
    rare = [r for r in rows_a if r["seg__tier"] == "rare"]
    assert len(rare) == 10  # all 10 replayable rare requests: a plain 10 % sample would keep about 1
    assert 80 < len(rows_a) < 160


def test_loops_and_warmup(tmp_path: Path) -> None:
    p, rows = prepared(tmp_path, loops=2, warmup_requests=5, max_requests=20)
    assert len(rows) == 20 and [r["warmup"] for r in rows].count(True) == 5
    assert {r["loop"] for r in rows} == {0, 1}
    second = [r for r in rows if r["loop"] == 1]
    assert second[0]["request_id"].endswith("-1") and second[0]["offset_s"] > rows[9]["offset_s"]


def test_run_phases_cut_the_replayed_time_in_equal_stretches(tmp_path: Path) -> None:
    from harness.errors import ScenarioError

    cap = capture(tmp_path)
    base = {"name": "t", "traffic": {"path": str(cap), "loops": 2},
            "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
            "replay": {"allow": ["POST /v1/items/*/score"]}}
    s = scenario_from_dict({**base, "segments": {"tier": {"header": "X-Tier"}, "phase": {"run_phase": 4}}})
    p = prepare_traffic(s, tmp_path / "work")
    con = duckdb.connect()
    rows = con.execute(f"""select "seg__phase", count(*), min(offset_s), max(offset_s)
                           from read_parquet('{p.schedule_path}') group by 1 order by 1""").fetchall()
    span = con.execute(f"select max(offset_s) from read_parquet('{p.schedule_path}')").fetchone()[0]
    assert [r[0] for r in rows] == ["1 of 4", "2 of 4", "3 of 4", "4 of 4"]
    for i, (_, n, lo, hi) in enumerate(rows):  # two loops of 990 POSTs every 0.1 s: 495 a quarter
        assert abs(n - 495) <= 2 and i * span / 4 <= lo <= hi <= (i + 1) * span / 4
    skipped = con.execute(f"select distinct seg__phase from read_parquet('{p.skipped_path}')").fetchall()
    assert skipped == [("(none)",)]  # the DELETEs, never replayed, are in no phase
    for segments, match in (({"phase": {"run_phase": 1}}, "run_phase"), ({"phase": {"run_phase": True}}, "run_phase"),
                            ({"phase": {"run_phase": 4}, "t": {"header": "X-Tier"}, "x": {"cross": ["phase", "t"]}},
                             "cannot be crossed")):
        with pytest.raises(ScenarioError, match=match):
            scenario_from_dict({**base, "segments": segments})
    with pytest.raises(ScenarioError, match="known only after sampling"):
        scenario_from_dict({**base, "segments": {"phase": {"run_phase": 4}},
                            "traffic": {"path": str(cap), "sample": {"fraction": 0.5, "stratify_by": "phase"}}})


def _skewed(tmp_path: Path, **traffic: object):
    """200 records over 20 s and, at line 101, one stamped a day early (a skewed clock)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    recs = [{"ts": T0 + i * 0.1, "method": "POST", "path": "/score", "body": {"i": i}} for i in range(200)]
    recs.insert(100, {"ts": T0 - 86_400, "method": "POST", "path": "/score", "body": {"i": -1}})
    cap = write_capture(tmp_path / "c.jsonl", recs)
    s = scenario_from_dict({"name": "t", "traffic": {"path": str(cap), **traffic},
                            "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
                            "replay": {"allow": ["POST /*"]}})
    p = prepare_traffic(s, tmp_path / "work")
    con = duckdb.connect()
    offsets = [r[0] for r in con.execute(f"select offset_s from read_parquet('{p.schedule_path}') order by order_idx")
               .fetchall()]
    return p, offsets


def test_har_records_are_named_as_entries_from_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A HAR file is one JSON document: messages name its records "entry N" (1-based), not "line N-1"."""
    from harness.cli import main
    from harness.errors import TrafficError

    def entry(when: str) -> dict:
        return {"startedDateTime": when, "request": {"method": "POST", "url": "http://svc/score", "headers": [],
                                                     "postData": {"mimeType": "application/json", "text": "{}"}}}

    cap = tmp_path / "c.har"
    cap.write_text(json.dumps({"log": {"entries": [entry("2023-07-25T10:42:01Z"), {"request": {}},
                                                   entry("2023-07-25T10:58:25Z")]}}))
    base = {"name": "t", "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
            "replay": {"allow": ["POST /*"]}}
    p = prepare_traffic(scenario_from_dict({**base, "traffic": {"path": str(cap)}}), tmp_path / "w1")
    assert "between the record at entry 1 (captured 2023-07-25T10:42:01+00:00) and the one at entry 3" in p.warnings[0]
    assert "bad records: 1 (the first, entry 2: " in p.counts_lines()[-1], p.counts_lines()
    with pytest.raises(TrafficError, match=rf"^{re.escape(str(cap))}: entry 2: .*on_bad_record: fail"):
        prepare_traffic(scenario_from_dict({**base, "traffic": {"path": str(cap), "on_bad_record": "fail"}}),
                        tmp_path / "w2")
    assert main(["traffic", "inspect", str(cap)]) == 0
    assert "\n    entry 2: " in capsys.readouterr().out


def test_a_long_idle_gap_is_named_and_max_gap_s_shortens_it(tmp_path: Path) -> None:
    """One record a day early made a 20 s capture a day-long run that sent one request and waited: the
    prepared schedule says so, naming the record's line; traffic.max_gap_s (tcpreplay's --maxsleep) shortens
    each longer idle gap to the limit and keeps every other gap and the order."""
    p, offsets = _skewed(tmp_path / "a")
    assert p.span_s > 86_000 and len(p.warnings) == 1
    assert "waits 86,400 s (100 % of its span) between the record at line 101 (captured 2023-11-13" in p.warnings[0]
    assert "and the one at line 1 (2023-11-14" in p.warnings[0] and "traffic.max_gap_s" in p.warnings[0], p.warnings
    p, offsets = _skewed(tmp_path / "b", max_gap_s=5)
    assert p.warnings == [] and 24.8 < p.span_s < 25.0 and len(offsets) == 201
    assert offsets[:2] == [0.0, 5.0]
    assert all(abs((b - a) - 0.1) < 1e-6 for a, b in zip(offsets[1:], offsets[2:]))  # the other gaps as captured
