"""Batched requests replayed for real against V1 predict servers: rows stored, row counts checked, bad rows
counted, row gates judged over requests."""
from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest

from batch_v1_server import BatchV1Server, probability
from kserve_v2_server import KServeV2Server, score_rows
from replay_helpers import replay, scenario_dict, write_capture

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
BASE_W, CAND_W = [1.0, -1.0, 0.5], [1.2, -0.8, 0.5]
FAULTS = {7: "short", 11: "long", 13: "nan", 17: "badsum", 19: "ragged"}


def records(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows = [[rng.gauss(0, 1.5) for _ in range(3)] for _ in range(rng.choice([1, 2, 5, 12, 40]))]
        body: dict = {"instances": rows}
        if i in FAULTS:
            body["fault"] = FAULTS[i]
        out.append({"ts": T0 + i * 0.04, "method": "POST", "path": "/v1/models/m:predict",
                    "headers": {"Content-Type": "application/json", "X-Tenant": "ab"[i % 2]}, "body": body})
    return out


def test_rows_are_stored_checked_and_judged(tmp_path: Path) -> None:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    recs = records(120)
    with BatchV1Server(BASE_W) as b, BatchV1Server(CAND_W, faults=True) as c:
        sc = scenario_dict(write_capture(tmp_path / "c.jsonl", recs), b.url, c.url, speed=2)
        sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = "kserve_v1"
        sc["segments"]["tenant"] = {"header": "X-Tenant"}
        sc["promotion_gates"] = {"row_flip_rate": {"maximum": 0.5},
                                 "tight": {"metric": "row_flip_rate", "maximum": 0.001, "per_segment": False},
                                 "row_score_change_p99": {"maximum": 0.9}, "error_rate": {"maximum": 0.5}}
        result = run_scenario(scenario_from_dict(sc), tmp_path / "out", echo=lambda m: None, progress_every_s=60)
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    sizes = dict(con.execute("select request_id, batch_size from requests").fetchall())
    assert sorted(sizes.values()) == sorted(len(r["body"]["instances"]) for r in recs)
    # a wrong row count is an error of its own kind, on the candidate only, never aligned
    errs = dict(con.execute("select r.seq, l.error_kind from legs l join requests r using (order_idx) "
                            "where l.version = 'candidate' and l.error_kind is not null").fetchall())
    assert errs == {8: "row_count_mismatch", 12: "row_count_mismatch"}  # seq is 1-based: records 7 and 11
    # invalid rows are kept in place with their reason
    bad = con.execute("select r.seq, p.row_idx, p.invalid_reason from prediction_rows p join requests r "
                      "using (order_idx) where p.invalid_reason is not null order by 1").fetchall()
    assert [(s, i) for s, i, _ in bad] == [(14, 0), (18, 0), (20, 0)]
    assert "NaN" in bad[0][2] and "sum to 1.5" in bad[1][2] and "ragged" in bad[2][2]
    # row_pairs: every row of the good answers, labels as the two models give them
    got = con.execute("select r.seq, p.row_idx, p.baseline_score, p.candidate_score, p.flipped from row_pairs p "
                      "join requests r using (order_idx) where p.baseline_error_kind is null "
                      "and p.candidate_error_kind is null and p.candidate_invalid_reason is null").fetchall()
    assert len(got) == sum(len(r["body"]["instances"]) for i, r in enumerate(recs) if i not in FAULTS) + \
        sum(len(recs[i]["body"]["instances"]) - 1 for i in (13, 17, 19))
    flips = 0
    for seq, row, bs, cs, flipped in got:
        x = recs[seq - 1]["body"]["instances"][row]
        pb, pc = probability(BASE_W, 0, x), probability(CAND_W, 0, x)
        assert bs == pytest.approx(pb) and cs == pytest.approx(pc)
        assert flipped == ((pb >= 0.5) != (pc >= 0.5))
        flips += flipped
    summary = json.loads((result.run_dir / "summary.json").read_text())
    rows = summary["rows"]
    assert rows["counts"]["mismatched_legs"] == 2 and rows["counts"]["invalid_candidate"] == 3
    assert rows["overall"]["flips"] == flips and rows["overall"]["rows"] == len(got) + 3 - 3
    gates = {(g["name"], g["segment"]): g for g in summary["gates"]}
    overall = gates[("row_flip_rate", None)]
    assert overall["status"] == "pass" and overall["observed"] == pytest.approx(flips / len(got))
    assert gates[("tight", None)]["status"] == "fail"
    assert {s for (name, s) in gates if name == "row_flip_rate"} >= {"tenant=a", "tenant=b", "batch_size=1",
                                                                     "batch_size=33-128"}
    assert gates[("row_score_change_p99", None)]["status"] == "pass"
    # the error rate counts the mismatched answers
    assert gates[("error_rate", None)]["candidate"] == pytest.approx(2 / 120)
    # the canary schedule sizes the row gate in requests, through the design effect and rows per request
    sizing = {s["gate"]: s for s in summary["schedule"]["sizing"]}
    assert "design effect" in sizing["row_flip_rate"]["basis"] and sizing["row_flip_rate"]["requests"] >= 10
    assert "already at or beyond" in sizing["tight"]["basis"]
    # the report: row confusion matrix, flips per segment, flipped rows without payloads
    html = (result.run_dir / "gate_report.html").read_text()
    assert 'id="rows"' in html and "Row flips per segment" in html
    matrix = rows["confusion"]
    assert f">{matrix[0][1]}<" in html and f">{matrix[1][0]}<" in html
    assert rows["examples"] and rows["examples"][0]["request_id"] in html
    assert "instances" not in html.split('id="rows"')[1].split("</section>")[0]


def test_v2_batches_are_read_row_by_row(tmp_path: Path) -> None:
    """Against the project's own Open Inference Protocol server (tests/kserve_v2_server.py): label and
    probability tensors of shape [N] give N rows; a request whose inputs disagree on N has no batch size."""
    rng = random.Random(5)
    batches = [[[rng.uniform(0, 30) for _ in range(4)] for _ in range(rng.randint(1, 6))] for _ in range(30)]
    recs = [{"ts": T0 + i * 0.02, "method": "POST", "path": "/v2/models/fraud/infer",
             "headers": {"Content-Type": "application/json"},
             "body": {"inputs": [{"name": "features", "shape": [len(b), 4], "datatype": "FP32", "data": b}]}}
            for i, b in enumerate(batches)]
    with KServeV2Server() as b, KServeV2Server(label_names={"fraud": "FRAUD"}) as c:
        sc = scenario_dict(write_capture(tmp_path / "c.jsonl", recs), b.url, c.url)
        sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = "kserve_v2"
        con, _ = replay(tmp_path, sc)
    got = con.execute("""select r.seq, p.row_idx, p.batch_size, p.baseline_label, p.candidate_label, p.baseline_score,
                                p.candidate_score, p.baseline_error_kind from row_pairs p join requests r using (order_idx)
                         order by 1, 2""").fetchall()
    assert len(got) == sum(len(b) for b in batches)
    for seq, row, size, bl, cl, bs, cs, err in got:
        label, p = score_rows(batches[seq - 1])[row]
        assert (size, bl, bs, cs, err) == (len(batches[seq - 1]), label, pytest.approx(p), pytest.approx(p), None)
        assert cl == {"fraud": "FRAUD"}.get(label, label)
    # a batch has no single prediction: the request-level columns stay empty for N > 1
    multi = con.execute("select count(*) filter (where prediction is not null) from legs l join requests r "
                        "using (order_idx) where r.batch_size > 1").fetchone()
    assert multi == (0,)


def test_requests_skipped_at_the_in_flight_limit_count_as_rows_in_row_gates(tmp_path: Path) -> None:
    """A load that was not delivered re-judges rate gates with the skipped requests as unknown outcomes; a
    row gate counts rows, so each skipped request weighs as many rows as an answered one holds."""
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    recs = [r for i, r in enumerate(records(60)) if i not in FAULTS]
    with BatchV1Server(BASE_W, delay_s=0.06) as b, BatchV1Server(CAND_W, delay_s=0.06) as c:
        sc = scenario_dict(write_capture(tmp_path / "c.jsonl", recs), b.url, c.url, speed=1, max_in_flight=1)
        sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = "kserve_v1"
        sc["promotion_gates"] = {"row_flip_rate": {"maximum": 0.95, "per_segment": False}}
        result = run_scenario(scenario_from_dict(sc), tmp_path / "out", echo=lambda m: None, progress_every_s=60)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    skipped = summary["counts"]["skipped"]
    assert skipped and summary["replay"]["delivered"] is False
    (gate,) = [g for g in summary["gates"] if g["name"] == "row_flip_rate"]
    n_skipped = sum(skipped.values())
    rows = summary["rows"]["overall"]
    per_request = rows["rows"] / rows["requests"]
    assert f" {n_skipped:,} requests ({round(n_skipped * per_request):,} rows) of this scope" in gate["reason"]
