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
