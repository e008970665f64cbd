"""How long the row judgement takes as rows grow: a synthetic results.duckdb (requests x rows per request,
10 % of labels differing per version) judged by load_rows, a row flip gate, the p99 score-change and PSI
gates (2,000 resamples asked, 400 used) and the summary block. Prints seconds per step.

    .venv/bin/python benchmarks/row_analysis_scale.py [--requests 20000] [--rows 32]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from harness.analysis.dataset import PairData
from harness.analysis.rows import load_rows, row_gate, rows_summary
from harness.gate_config import parse_gates
from harness.store import PREDICTION_ROWS_VIEW, ROW_PAIRS_VIEW


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=32)
    a = ap.parse_args()
    r, k = a.requests, a.rows
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "results.duckdb"))
        con.execute(f"""create table requests as select range as order_idx, 'r' || range as request_id,
                        false as warmup, {k}::bigint as batch_size, ['a', 'b'][range % 2 + 1] as tenant from range({r})""")
        con.execute(f"""create table legs as select q.order_idx, q.request_id, v.version, null::varchar as error_kind,
              {k}::bigint as row_count,
              list_transform(range({k}), lambda x: case when hash(q.order_idx, x, v.version) % 10 = 0 then '1' else '0' end)
                as row_labels,
              list_transform(range({k}), lambda x: (hash(q.order_idx, x, v.version) % 1000) / 1000.0) as row_scores,
              list_transform(range({k}), lambda x: null::varchar) as row_invalid
            from requests q, (values ('baseline'), ('candidate')) v(version)""")
        con.execute(PREDICTION_ROWS_VIEW)
        con.execute(ROW_PAIRS_VIEW)
        pairs = PairData(order_idx=np.arange(r), segments={"tenant": ["ab"[i % 2] for i in range(r)]}, latency={},
                         error={}, timeout={}, schema_judged={}, schema_valid={}, status_4xx={}, score={}, n=r)
        t = time.perf_counter()
        rows = load_rows(con, pairs)
        assert rows is not None
        print(f"{rows.n:,} rows in {r:,} requests")
        print(f"load_rows: {time.perf_counter() - t:.2f} s")
        mask = np.ones(r, bool)
        gates = parse_gates({"row_flip_rate": {"maximum": 0.5}, "row_score_change_p99": {"maximum": 0.5},
                             "row_score_psi": {"maximum": 0.25}}, "benchmark")
        for g in gates:
            t = time.perf_counter()
            row_gate(g, rows, mask, None, 0.05, 2000, 0)
            print(f"{g.name}: {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        rows_summary(con, rows, pairs)
        print(f"rows_summary: {time.perf_counter() - t:.2f} s")
        con.close()


if __name__ == "__main__":
    main()
