"""The report's views of summary.json, from small hand-written summaries (no run needed)."""
from __future__ import annotations

from harness.report.outputs_view import output_diff_view


def _outputs(baseline_labels: dict[str, int], candidate_labels: dict[str, int]) -> dict:
    confusion = {b: {c: 1 for c in candidate_labels} for b in baseline_labels}
    return {"outputs": {"pairs": 500, "compared": 500, "labels": {
        "n": 500, "baseline_labels": baseline_labels, "candidate_labels": candidate_labels, "confusion": confusion,
        "only_baseline": sorted(set(baseline_labels) - set(candidate_labels)),
        "only_candidate": sorted(set(candidate_labels) - set(baseline_labels)), "agreement": 0.01, "kappa": 0.0}}}


def test_numeric_predictions_are_scores_not_a_label_table() -> None:
    scores_b = {f"{0.001 * i:.3f}": 1 for i in range(300)}
    scores_c = {f"{0.0011 * i:.4f}": 1 for i in range(300)}
    view = output_diff_view(_outputs(scores_b, scores_c))
    assert view is not None and view["labels"] is None
    assert view["scores_as_labels"] == {"n": "500", "distinct": f"{len(set(scores_b) | set(scores_c)):,}"}


def test_labels_and_small_integer_classes_keep_their_table() -> None:
    for labels in ({"fraud": 10, "ok": 490}, {"0": 400, "1": 100}):
        view = output_diff_view(_outputs(labels, labels))
        assert view is not None and view["scores_as_labels"] is None
        assert view["labels"]["names"] and set(view["labels"]["names"]) == set(labels)


def _gate(metric: str, segment: str | None, status: str, used: float, reason: str, **extra: object) -> dict:
    return {"name": {"latency_ms": "latency_p95_ms", "error_rate": "error_rate"}[metric], "metric": metric,
            "aggregation": "p95" if metric == "latency_ms" else "rate", "segment": segment, "status": status,
            "severity": "blocking", "baseline": 10.0, "candidate": 13.0, "observed": 1.3, "ci": [0.9, 1.8],
            "threshold": 0.1, "threshold_text": "<= +10 %", "comparison": "relative" if metric == "latency_ms"
            else "absolute", "n": 300, "reason": reason, "allowance_used": used, **extra}


def _summary() -> dict:
    gates = [_gate("latency_ms", None, "fail", 1.5, "p95 overall is worse"),
             _gate("latency_ms", "tenant=a", "inconclusive", 3.0, "p95 in tenant=a: straddles"),
             _gate("latency_ms", "tenant=b", "fail", 6.0, "p95 in tenant=b is much worse"),
             _gate("error_rate", "tenant=b", "fail", 2.0, "errors in tenant=b")]
    segments = [{"segment": s, "segment_name": "tenant", "segment_value": s[-1], "n": 300, "baseline_p95_ms": 10.0,
                 "candidate_p95_ms": 11.0, "baseline_error_rate": 0.0, "candidate_error_rate": 0.001}
                for s in ("tenant=a", "tenant=b")]
    worst = [{"segment": g["segment"], "gate": g["name"], "metric": g["metric"], "aggregation": g["aggregation"],
              "baseline": 10.0, "candidate": 13.0, "observed": 1.3, "ci": [0.9, 1.8], "threshold": 0.1, "n": 300,
              "status": g["status"], "effect": 0.3, "severity": g["allowance_used"],
              "allowance_used": g["allowance_used"], "reason": g["reason"]} for g in gates[1:]]
    return {"verdict": "BLOCK", "gates": gates, "segments": segments, "worst_segments": worst,
            "verdict_reasons": ["p95 overall is worse", "errors in tenant=b", "p95 in tenant=b is much worse"],
            "run": {"id": "r1", "scenario": "s", "status": "complete", "status_reason": None, "mode": "paired",
                    "speed": 1.0, "started_at": "2026-12-03T00:00:00+00:00", "finished_at": "2026-12-03T00:01:00+00:00",
                    "scenario_sha256": "0" * 64, "capture_path": "c.jsonl", "capture_sha256": "0" * 64,
                    "harness_version": "0.1.0", "git_commit": None, "baseline_url": "http://127.0.0.1:1",
                    "candidate_url": "http://127.0.0.1:2", "owner": None, "report_harness_version": "0.1.0"},
            "counts": {}}


def test_heatmap_colours_the_allowance_used_and_never_an_inconclusive_cell_past_the_threshold() -> None:
    from harness.report.heatmap import LEGEND, segment_heatmap

    rows = {r["segment"]: r for r in segment_heatmap(_summary())["rows"]}
    a, b = rows["tenant=a"]["cells"][0], rows["tenant=b"]["cells"][0]
    assert a["status"] == "inconclusive" and "beyond" not in a["band"] and a["colour"] == LEGEND[1][1]
    # the fail cell's colour comes from its gate's allowance_used (6.0), not the point estimates (+10 % = 1.0)
    assert b["status"] == "fail" and b["band"] == "over four times the threshold"


def test_ranked_table_shows_the_same_allowance_used() -> None:
    from harness.report.sections import worst_segment_rows

    rows = worst_segment_rows(_summary())
    assert [(r["segment"], r["allowance_used"]) for r in rows] == [
        ("tenant=a", "3.00×"), ("tenant=b", "6.00×"), ("tenant=b", "2.00×")]


def test_banner_lists_reasons_worst_first_and_json_wraps_only_between_values() -> None:
    from harness.report.html import _json_break_opportunities, render_report

    page = render_report(_summary(), None)
    order = [page.index(r) for r in ("p95 in tenant=b is much worse", "errors in tenant=b", "p95 overall is worse")]
    assert order == sorted(order)
    wrapped = str(_json_break_opportunities('{"score":0.87312,"label":"<b>"}'))
    assert wrapped == '{&#34;score&#34;:<wbr>0.87312,<wbr>&#34;label&#34;:<wbr>&#34;&lt;b&gt;&#34;}'
    assert "overflow-wrap: anywhere" not in page.split("pre.output {", 1)[1].split("}", 1)[0]


def test_ranked_change_is_the_heatmaps_change() -> None:
    from harness.report.heatmap import segment_heatmap
    from harness.report.sections import worst_segment_rows

    summary = _summary()
    for g in summary["gates"] + summary["worst_segments"]:
        if g.get("metric") == "error_rate":
            g.update(baseline=0.004, candidate=0.031)
    for s in summary["segments"]:
        s.update(baseline_error_rate=0.004, candidate_error_rate=0.031, baseline_p95_ms=10.0, candidate_p95_ms=13.0)
    heat = {r["segment"]: r["cells"] for r in segment_heatmap(summary)["rows"]}
    ranked = {(r["segment"], r["gate"]): r["effect"] for r in worst_segment_rows(summary)}
    assert ranked[("tenant=b", "error_rate")] == heat["tenant=b"][1]["text"] == "+2.70\u00a0pts"
    assert ranked[("tenant=b", "latency_p95_ms")] == heat["tenant=b"][0]["text"] + " p95" == "+30.0\u00a0% p95"


def test_the_heatmaps_latency_cell_shows_its_gates_p95s() -> None:
    """The segment overview's p95 is every leg's plain p95 (10 -> 11 ms here); the p95 gate's is Harrell-Davis
    with failed legs counted as the slowest (10 -> 13 ms). The cell printed the overview's beside the gate's
    status: a route whose candidate failed 3 % of requests read "-0.0 % FAIL" where its gate row said
    +44.7 %. A p50 gate of the same segment listed first no longer lends the cell its status."""
    from harness.report.heatmap import segment_heatmap

    summary = _summary()
    p50 = {**_gate("latency_ms", "tenant=a", "pass", 0.1, "p50 in tenant=a"), "name": "latency_p50_ms",
           "aggregation": "p50", "baseline": 5.0, "candidate": 5.1}
    summary["gates"].insert(0, p50)
    heat = {r["segment"]: r["cells"][0] for r in segment_heatmap(summary)["rows"]}
    assert heat["tenant=b"]["text"] == "+30.0\u00a0%" and heat["tenant=b"]["detail"] == "10.0 → 13.0\u00a0ms"
    assert heat["tenant=a"]["status"] == "inconclusive" and heat["tenant=a"]["text"] == "+30.0\u00a0%"
