"""The replay's progress lines: recent send lag while it runs, the whole run's at the end, each named
for what it covers, and the end's equal to the summary's figure (quantile_cont over the legs)."""
from __future__ import annotations

import duckdb
import numpy as np

from harness.replay.runner import _lag_text


def test_progress_names_the_recent_window_and_done_gives_the_whole_runs_figure() -> None:
    rng = np.random.default_rng(3)
    # a slow start (the first 1,000 legs late by ~50 ms) then an on-time run: the two windows disagree
    lags = list(np.concatenate([rng.uniform(40, 60, 1000), rng.uniform(0, 1, 9000)]))
    running = _lag_text(lags, len(lags), final=False)
    assert running.startswith("send lag p99 (last 2,000 legs) ") and float(running.split()[-2]) <= 1.0
    con = duckdb.connect()
    whole = con.execute("select quantile_cont(x, 0.99) from (select unnest(?::double[]) as x)", [lags]).fetchall()[0][0]
    assert whole > 40
    assert _lag_text(lags, len(lags), final=True) == f"send lag p99 (whole run) {whole:.1f} ms"


def test_no_partial_figure_at_the_end_when_early_lags_were_dropped() -> None:
    assert _lag_text([1.0] * 50_000, 150_000, final=True) == "send lag p99 (whole run) in the summary"
