"""Row gates on small fixtures (harness.analysis.rows through harness.gates): clustered by request, too few
requests is inconclusive, the general gate form and the short names parse."""
from __future__ import annotations

import numpy as np
import pytest

from harness.analysis.dataset import Coded, PairData
from harness.analysis.rows import RowData, batch_size_buckets
from harness.errors import ScenarioError
from harness.gate_config import parse_gates
from harness.gates import evaluate_gates


def _data(batches: list[list[tuple[str, str, float, float]]], tenants: list[str]) -> PairData:
    n = len(batches)
    z = np.zeros(n)
    f = np.zeros(n, dtype=bool)
    pairs = PairData(order_idx=np.arange(n, dtype=np.int64), segments={"tenant": tenants},
                     latency={"baseline": z + 1, "candidate": z + 1}, error={"baseline": f, "candidate": f},
                     timeout={"baseline": f, "candidate": f}, schema_judged={"baseline": f, "candidate": f},
                     schema_valid={"baseline": f, "candidate": f}, status_4xx={"baseline": f, "candidate": f},
                     score={"baseline": z, "candidate": z}, n=n,
                     prediction={"baseline": [None] * n, "candidate": [None] * n})
    flat = [(i, j, *row) for i, rows in enumerate(batches) for j, row in enumerate(rows)]
    pairs.rows = RowData(
        request_pos=np.array([r[0] for r in flat], dtype=np.intp), order_idx=np.array([r[0] for r in flat]),
        row_idx=np.array([r[1] for r in flat]), batch_size=np.array([float(len(batches[r[0]])) for r in flat]),
        label=Coded.joint({"baseline": [r[2] for r in flat], "candidate": [r[3] for r in flat]}),
        score={"baseline": np.array([r[4] for r in flat]), "candidate": np.array([r[5] for r in flat])},
        invalid={"baseline": np.zeros(len(flat), bool), "candidate": np.zeros(len(flat), bool)})
    return pairs


def test_flip_rate_is_judged_over_requests_and_per_segment() -> None:
    rng = np.random.default_rng(0)
    batches, tenants = [], []
    for i in range(200):
        tenant = "ab"[i % 2]
        flip_p = 0.02 if tenant == "a" else 0.4
        rows = []
        for _ in range(int(rng.integers(1, 30))):
            s = float(rng.random())
            flipped = rng.random() < flip_p
            rows.append(("1" if s > 0.5 else "0", ("0" if s > 0.5 else "1") if flipped else ("1" if s > 0.5 else "0"),
                         s, s + (0.3 if flipped else 0.01)))
        batches.append(rows)
        tenants.append(tenant)
    data = _data(batches, tenants)
    specs = parse_gates({"row_flip_rate": {"maximum": 0.1}, "row_score_change": {"maximum": 0.5}}, "t")
    res = {(r.name, r.segment): r for r in evaluate_gates(specs, data, None, n_resamples=200)}
    assert res[("row_flip_rate", "tenant=a")].status == "pass"
    assert res[("row_flip_rate", "tenant=b")].status == "fail"
    assert "requests" in res[("row_flip_rate", None)].reason
    ch = res[("row_score_change", None)]
    assert ch.status == "pass" and ch.ci[0] <= ch.observed <= ch.ci[1]


def test_too_few_requests_is_inconclusive_however_many_rows() -> None:
    data = _data([[("1", "1", 0.9, 0.9)] * 500] * 5, ["a"] * 5)  # 2,500 rows, all agreeing, in 5 requests
    (r, *_) = evaluate_gates(parse_gates({"row_flip_rate": {"maximum": 0.05}}, "t"), data, None)
    assert r.status == "inconclusive" and "5 requests" in r.reason


def test_row_gates_parse_in_both_forms_and_refuse_relative_conditions() -> None:
    g = parse_gates({"row_flip_rate": {"maximum": 0.02}, "row_score_change_p99": {"maximum": 0.1},
                     "tenant_rows": {"metric": "row_agreement", "segment": {"tenant": "a"}, "minimum": 0.98}}, "t")
    assert [(x.metric, x.aggregation) for x in g] == [("row_flip_rate", "rate"), ("row_score_change", "p99"),
                                                      ("row_agreement", "rate")]
    with pytest.raises(ScenarioError, match="compares the two versions"):
        parse_gates({"row_flip_rate": {"maximum_increase": 0.01}}, "t")


def test_batch_size_buckets() -> None:
    assert batch_size_buckets(np.array([1, 2, 8, 9, 32, 33, 128, 129, np.nan, 0])) == [
        "1", "2-8", "2-8", "9-32", "9-32", "33-128", "33-128", "129+", None, None]


@pytest.mark.parametrize("metric,aggregation", [("row_score_change", "mean"), ("row_score_change", "p99"),
                                                ("row_score_psi", "value"), ("row_score_ks", "value")])
def test_weighted_bootstrap_agrees_with_resampling_requests(metric: str, aggregation: str) -> None:
    """The fast form (request weights on per-request totals and bins) gives the interval that resampling
    whole requests' rows gives, within the bootstrap's own noise."""
    from harness.analysis import stats
    from harness.analysis.clustered import ClusterIndex, cluster_bootstrap
    from harness.analysis.rows import _bootstrap_over_requests

    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 20, size=300)
    cluster = np.repeat(np.arange(300), sizes)
    shift = rng.normal(0, 0.1, size=300)[cluster]  # rows of a request move together
    bs = rng.beta(2, 5, size=len(cluster))
    cs = np.clip(bs + shift + rng.normal(0, 0.02, size=len(cluster)), 0, 1)
    value, fast = _bootstrap_over_requests(metric, aggregation, bs, cs, cluster, 300, 600, 1)

    def statistic(i: np.ndarray) -> float:
        if metric == "row_score_change":
            d = np.abs(cs[i] - bs[i])
            return float(np.mean(d) if aggregation == "mean" else np.quantile(d, 0.99))
        return stats.psi(bs[i], cs[i]) if metric == "row_score_psi" else stats.ks_statistic(bs[i], cs[i])

    slow = cluster_bootstrap(statistic, ClusterIndex(cluster), 600, 2)
    assert value == pytest.approx(statistic(np.arange(len(cluster))))
    spread = np.quantile(slow, 0.95) - np.quantile(slow, 0.05)
    for q in (0.05, 0.5, 0.95):
        assert abs(np.quantile(fast, q) - np.quantile(slow, q)) < 0.25 * spread, q


def test_the_schedule_scopes_batch_size_gates_by_the_same_buckets_as_the_gates() -> None:
    """A gate's `segment: {batch_size: "33-128"}` is sized on the requests the gate judges: the schedule's SQL
    gives each stored row count the bucket label that batch_size_buckets gives it."""
    import duckdb

    from harness.schedule.sizing import _segment_sql

    sizes = [0, 1, 2, 7, 8, 9, 31, 32, 33, 64, 128, 129, 4096, None]
    con = duckdb.connect()
    got = [v for (v,) in con.execute(f"select {_segment_sql('batch_size')} from "
                                      f"(select unnest(?::bigint[]) as batch_size) r", [sizes]).fetchall()]
    assert got == batch_size_buckets(np.array([np.nan if s is None else s for s in sizes], dtype=np.float64))
