"""Rollback conditions: each gate's live threshold and a PromQL template of its live metric."""
from __future__ import annotations

from typing import Any

from ..gate_config import GateSpec
from .policy import _QUANTILES
from .sizing import _scope_label


def _promql(spec: GateSpec, canary: str, stable: str, pods: str, window: str) -> str | None:
    """A PromQL template for the gate's live metric over Istio's standard metrics / kube-state-metrics.
    ``canary``/``stable`` are label matchers of each version's traffic, ``pods`` of the canary pods."""
    def latency(sel: str) -> str:
        q = _QUANTILES.get(spec.aggregation)
        if q is None:
            return (f"sum(rate(istio_request_duration_milliseconds_sum{{{sel}}}[{window}])) / "
                    f"sum(rate(istio_request_duration_milliseconds_count{{{sel}}}[{window}]))")
        buckets = f"istio_request_duration_milliseconds_bucket{{{sel}}}"
        return f"histogram_quantile({q}, sum by (le) (rate({buckets}[{window}])))"

    def bad_rate(sel: str) -> str:
        if spec.metric == "schema_pass_rate":
            return (f"(1 - sum(increase(model_output_schema_failures_total{{{sel}}}[{window}])) / "
                    f"sum(increase(model_output_schema_checked_total{{{sel}}}[{window}])))")
        match = 'response_code=~"5.*"' if spec.metric == "error_rate" else 'response_code="504"'
        return (f"(sum(rate(istio_requests_total{{{sel}, {match}}}[{window}])) / "
                f"sum(rate(istio_requests_total{{{sel}}}[{window}])))")

    m = spec.metric
    if m == "latency_ms":
        if spec.comparison == "relative":
            return f"{latency(canary)}\n/\n{latency(stable)}"
        return latency(canary) + (f"\n-\n{latency(stable)}" if spec.comparison == "delta" else "")
    if m in ("error_rate", "timeout_rate", "schema_pass_rate"):
        if spec.comparison == "absolute":
            return bad_rate(canary)
        op = "/" if spec.comparison == "relative" else "-"
        return f"{bad_rate(canary)}\n{op}\n{bad_rate(stable)}"
    series = {"restarts": "kube_pod_container_status_restarts_total", "oom_kills": "container_oom_events_total",
              "gpu_oom_events": "gpu_oom_events_total"}
    if m in series:
        return f"sum(increase({series[m]}{{{pods}}}[{window}])) or vector(0)"
    if m == "peak_rss_mb":
        return f"max(max_over_time(container_memory_working_set_bytes{{{pods}, container!=\"\"}}[{window}])) / 1e6"
    if m == "peak_gpu_memory_mb":
        return f"max(max_over_time(DCGM_FI_DEV_FB_USED{{{pods}}}[{window}]))"
    return None


def _live_threshold(spec: GateSpec) -> tuple[str, float, str]:
    """(direction 'max'|'min', number the live metric is compared with, human condition for rollback)."""
    what = f"{spec.aggregation} latency" if spec.metric == "latency_ms" else spec.metric.replace("_", " ")
    if spec.comparison == "relative":
        limit = 1 + spec.threshold
        op = ">" if spec.direction == "max" else "<"
        return spec.direction, limit, f"canary {what} / stable {what} {op} {limit:g}"
    if spec.comparison == "delta":
        return spec.direction, spec.threshold, (f"canary {what} - stable {what} "
                                                f"{'>' if spec.direction == 'max' else '<'} {spec.threshold:g}")
    return spec.direction, spec.threshold, f"canary {what} {'>' if spec.direction == 'max' else '<'} {spec.threshold:g}"


def _rollback_condition(spec: GateSpec, result: dict[str, Any] | None) -> dict[str, Any]:
    direction, limit, condition = _live_threshold(spec)
    query = _promql(spec, 'destination_workload="<canary-workload>"', 'destination_workload="<stable-workload>"',
                    'pod=~"<canary-pods>"', "<step window>")
    manual = spec.metric == "review_score"
    raw = spec.threshold * 100 if spec.condition_key == "maximum_regression_percent" else spec.threshold
    action = "manual review" if manual else ("rollback" if spec.severity == "blocking" else "alert")
    return {"gate": spec.name, "metric": spec.metric, "aggregation": spec.aggregation, "segment": _scope_label(spec),
            "severity": spec.severity, "action": action, "rollback_when": condition, "comparison": spec.comparison,
            "direction": direction, "gate_threshold": spec.threshold, "live_threshold": limit,
            "success_condition": f"result {'<=' if direction == 'max' else '>='} {limit:g}",
            "promql_template": query,
            "basis": f"gate {spec.name}: {spec.condition_key} {raw:g} ({spec.threshold_text})"
                     + (f"; shadow result: {result['status']}" if result else "")
                     + ("; a review score has no live metric: review a sample of canary answers" if manual else "")
                     + (f"; scoped to {_scope_label(spec)}: add that segment's label matcher to the query"
                        if spec.segment else "")}

