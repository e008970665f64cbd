"""The run-folder contract (docs/architecture.md, "The run folder"), executable.

Tests call `assert_meets_contract(run_dir)`; by hand:

    .venv/bin/python tests/run_folder_contract.py RUN_DIR [--mode paired|aa|baseline-only]

prints one line per problem and exits 1 if there is any. The names checked here are the contract
that users, CI and other tools rely on: they change only on purpose, with docs/architecture.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FILES = ["results.duckdb", "summary.json", "gate_report.html", "canary_schedule.yaml", "junit.xml"]
TABLES: dict[str, list[str]] = {
    "runs": [],
    "requests": ["request_id", "captured_at", "offset_s", "method", "path", "route", "request_bytes"],
    "legs": ["request_id", "version", "intended_at", "sent_at", "send_lag_ms", "latency_ms", "service_ms",
             "status_code", "error_kind", "response_bytes", "schema_valid"],
    "resources": [],
    "bad_records": [],
}
VERDICTS = {"PROMOTE", "HOLD", "BLOCK"}
STATUSES = {"pass", "fail", "inconclusive"}
GATE_KEYS = ["name", "metric", "segment", "threshold", "n", "status", "reason"]
LEGS_PER_REQUEST = {"paired": 2, "aa": 2, "baseline-only": 1}


def problems(run: Path, mode: str = "paired") -> list[str]:
    """Every way `run` breaks the contract; empty when it meets it."""
    found = [f"missing {f}" for f in FILES if not (run / f).exists()]
    if (run / "results.duckdb").exists():
        found += _database_problems(run / "results.duckdb", mode)
    if (run / "summary.json").exists():
        found += _summary_problems(json.loads((run / "summary.json").read_text(encoding="utf-8")))
    return found


def _database_problems(path: Path, mode: str) -> list[str]:
    import duckdb

    found: list[str] = []
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        for table, cols in TABLES.items():
            if table not in names:
                found.append(f"results.duckdb: no table {table}")
                continue
            have = {r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_name = ?", [table]).fetchall()}
            found += [f"results.duckdb: {table} has no column {c}" for c in cols if c not in have]
        if "pairs" not in names:
            found.append("results.duckdb: no view pairs")
        if {"requests", "legs"} <= names:
            n_requests = con.execute("select count(*) from requests").fetchone()[0]  # type: ignore[index]
            n_legs = con.execute("select count(*) from legs").fetchone()[0]  # type: ignore[index]
            per = LEGS_PER_REQUEST[mode]
            if n_legs != per * n_requests:
                found.append(f"legs {n_legs} != {per} x requests {n_requests}")
            legs_columns = {r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_name = 'legs'").fetchall()}
            if "version" in legs_columns:
                bad_versions = con.execute(
                    "select distinct version from legs where version not in ('baseline', 'candidate')").fetchall()
                if bad_versions:
                    found.append(f"legs.version outside baseline/candidate: {bad_versions}")
    finally:
        con.close()
    return found


def _summary_problems(s: dict) -> list[str]:
    found: list[str] = []
    complete = (s.get("run") or {}).get("status", "complete") == "complete"
    if not complete:  # an incomplete run has no verdict, only a provisional one
        if s.get("verdict") != "INCOMPLETE" or s.get("provisional_verdict") not in VERDICTS:
            found.append(f"summary.json: an incomplete run's verdict is INCOMPLETE with a provisional_verdict, got "
                         f"{s.get('verdict')!r} / {s.get('provisional_verdict')!r}")
    elif s.get("verdict") not in VERDICTS:
        found.append(f"summary.json: verdict {s.get('verdict')!r} not one of {sorted(VERDICTS)}")
    found += [f"summary.json: no {key}" for key in ("gates", "worst_segments", "counts") if key not in s]
    for i, g in enumerate(s.get("gates", [])):
        found += [f"summary.json: gates[{i}] has no {k}" for k in GATE_KEYS if k not in g]
        if str(g.get("status")).lower() not in STATUSES:
            found.append(f"summary.json: gates[{i}].status {g.get('status')!r}")
    return found


def assert_meets_contract(run: Path | str, mode: str = "paired") -> None:
    found = problems(Path(run), mode)
    assert not found, f"{run} breaks the run-folder contract:\n" + "\n".join(found)


def main() -> int:
    ap = argparse.ArgumentParser(description="Checks a harness run folder against its contract.")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--mode", default="paired", choices=sorted(LEGS_PER_REQUEST))
    args = ap.parse_args()
    found = problems(args.run_dir, args.mode)
    for p in found:
        print(p)
    if not found:
        print(f"{args.run_dir}: meets the run-folder contract")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
