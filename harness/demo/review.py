"""The demo's review panel: what a team does after a shadow run, simulated.

Reviewers grade the answers of both versions against the outcome that arrived later (a chargeback
or none): 1 when the answer is usable and its fraud/legit call matches the outcome, else 0. The
outcomes are simulated, deterministically: a request's transactions turn out to be fraud with the
probability the calibrated logistic model gives them. The grades are imported into the run with
`harness scores import`, exactly as real review scores would be.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..scores import import_scores
from ..store import open_results
from .model import InvalidRequest, body_fraction, load_model, parse_score_request

__all__ = ["write_review_scores", "review_run"]


def _outcomes(capture: Path, lines: set[int]) -> dict[int, str]:
    """line -> 'fraud' | 'legit' for the score requests on those lines of the capture."""
    reference = load_model("baseline")
    out: dict[int, str] = {}
    with open(capture, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno not in lines:
                continue
            try:
                rec = json.loads(raw)
                body = rec.get("body")
                doc = json.loads(body) if isinstance(body, str) else body
                batch = parse_score_request(doc)
            except (ValueError, InvalidRequest, AttributeError):
                continue
            p = float(reference.risk(batch).max())
            key = json.dumps(doc, separators=(",", ":")).encode()
            out[lineno] = "fraud" if body_fraction(key, "chargeback") < p else "legit"
    return out


def write_review_scores(run_dir: Path, capture: Path, out: Path) -> int:
    con = open_results(run_dir / "results.duckdb", read_only=True)
    try:
        rows = con.execute("""select r.request_id, r.source_line, l.version, l.prediction,
                                     coalesce(l.schema_valid, false) and l.error_kind is null as usable
                              from requests r join legs l using (request_id)
                              where r.route like '%score' and not r.warmup""").fetchall()
    finally:
        con.close()
    outcomes = _outcomes(capture, {r[1] for r in rows})
    n = 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "version", "score"])
        for request_id, line, version, prediction, usable in rows:
            if line in outcomes:
                w.writerow([request_id, version, 1.0 if usable and prediction == outcomes[line] else 0.0])
                n += 1
    return n


def review_run(run_dir: Path, capture: Path) -> int:
    scores = run_dir / "review_scores.csv"
    write_review_scores(run_dir, capture, scores)
    return import_scores(run_dir, scores)
