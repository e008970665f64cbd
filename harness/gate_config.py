"""Promotion gates as written in a scenario -> typed GateSpec objects.

A gate is a metric with a condition (Evidently's model), possibly relative to the baseline. The seed's
short names (`latency_p95_ms: {maximum_regression_percent: 10}`) are sugar for the general form
(`{metric: latency_ms, aggregation: p95, maximum_regression_percent: 10}`). Unknown names, metrics,
aggregations or condition keys are errors: a mistyped gate must never pass silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping

from .errors import ScenarioError

__all__ = ["GateSpec", "METRICS", "LATENCY_LIKE", "DETECTOR_RATES", "PAIR_METRICS", "ROW_METRICS", "HIGHER_IS_BETTER",
           "SLO_METRICS", "parse_gates", "unseen_gate_values"]

Comparison = Literal["absolute", "relative", "delta"]

# metric -> (allowed aggregations, default aggregation, unit)
METRICS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "latency_ms": (("p50", "p90", "p95", "p99", "mean"), "p95", "ms"),
    "error_rate": (("rate",), "rate", "fraction"),
    "timeout_rate": (("rate",), "rate", "fraction"),
    "schema_pass_rate": (("rate",), "rate", "fraction"),
    "review_score": (("mean",), "mean", "score"),
    "gpu_oom_events": (("count",), "count", "events"),
    "oom_kills": (("count",), "count", "events"),
    "restarts": (("count",), "count", "events"),
    "peak_rss_mb": (("max",), "max", "MB"),
    "peak_gpu_memory_mb": (("max",), "max", "MB"),
    # streamed answers (openai protocol), paired like latency_ms
    "time_to_first_token_ms": (("p50", "p90", "p95", "p99", "mean"), "p95", "ms"),
    "inter_token_ms": (("p50", "p90", "p95", "p99", "mean"), "p95", "ms"),  # over each leg's mean token gap
    "completion_tokens": (("p50", "p90", "p95", "mean"), "mean", "tokens"),
    # LLM serving (harness.analysis.llm_metrics): per stream, and the share of requests meeting the SLOs
    "latency_per_token_ms": (("p50", "p90", "p95", "p99", "mean"), "p95", "ms"),  # end-to-end / output tokens
    "output_tokens_per_s": (("p5", "p10", "p50", "mean"), "p50", "tokens/s"),  # per stream, after the first token
    "goodput": (("rate",), "rate", "fraction"),  # share of requests meeting every `slo` together
    # detectors (output.detectors; tool calls always): share of judged answers
    "abstention_rate": (("rate",), "rate", "fraction"),
    "citation_rate": (("rate",), "rate", "fraction"),
    "fallback_rate": (("rate",), "rate", "fraction"),
    "tool_call_validity_rate": (("rate",), "rate", "fraction"),
    # baseline against candidate, per pair (harness.analysis.output_diff): absolute limits only
    "label_agreement": (("rate",), "rate", "fraction"),
    "label_flip_rate": (("rate",), "rate", "fraction"),
    "field_diff_rate": (("rate",), "rate", "fraction"),
    "label_kappa": (("value",), "value", "kappa"),
    "confidence_psi": (("value",), "value", "PSI"),
    "confidence_ks": (("value",), "value", "KS"),
    "confidence_mean_shift": (("mean",), "mean", "confidence"),
    # row by row, for batched answers (harness.analysis.rows): intervals over requests, absolute limits only
    "row_flip_rate": (("rate",), "rate", "fraction"),
    "row_agreement": (("rate",), "rate", "fraction"),
    "row_invalid_rate": (("rate",), "rate", "fraction"),
    "row_score_change": (("mean", "p99"), "mean", "score"),
    "row_score_psi": (("value",), "value", "PSI"),
    "row_score_ks": (("value",), "value", "KS"),
}

ROW_METRICS = frozenset({"row_flip_rate", "row_agreement", "row_invalid_rate", "row_score_change", "row_score_psi",
                         "row_score_ks"})

LATENCY_LIKE = frozenset({"latency_ms", "time_to_first_token_ms", "inter_token_ms", "completion_tokens",
                          "latency_per_token_ms", "output_tokens_per_s"})
# metric -> legs column of the detector
DETECTOR_RATES = {"abstention_rate": "abstained", "citation_rate": "cited", "fallback_rate": "fallback_model",
                  "tool_call_validity_rate": "tool_calls_valid"}
# measured on the pair, not per version: no baseline value to be relative to
PAIR_METRICS = frozenset({"label_agreement", "label_flip_rate", "field_diff_rate", "label_kappa", "confidence_psi",
                          "confidence_ks", "confidence_mean_shift"}) | ROW_METRICS
# where a lower value is the worse one
HIGHER_IS_BETTER = frozenset({"schema_pass_rate", "review_score", "citation_rate", "tool_call_validity_rate",
                              "label_agreement", "label_kappa", "row_agreement", "goodput", "output_tokens_per_s"})
# goodput's `slo` keys: the per-leg series each limit applies to (AIPerf's goodput: all of them at once)
SLO_METRICS = ("time_to_first_token_ms", "inter_token_ms", "latency_ms")

# condition key -> (comparison, direction); direction "max" means the observed value must stay <= threshold
CONDITIONS: dict[str, tuple[Comparison, str]] = {
    "maximum": ("absolute", "max"),
    "minimum": ("absolute", "min"),
    "maximum_regression_percent": ("relative", "max"),
    "maximum_increase": ("delta", "max"),
    "minimum_delta": ("delta", "min"),
}

_SEED_NAMES = {
    "error_rate": ("error_rate", "rate"),
    "timeout_rate": ("timeout_rate", "rate"),
    "schema_validation_pass_rate": ("schema_pass_rate", "rate"),
    "human_review_score": ("review_score", "mean"),
    "review_score": ("review_score", "mean"),
    "gpu_oom_events": ("gpu_oom_events", "count"),
    "oom_kills": ("oom_kills", "count"),
    "restarts": ("restarts", "count"),
    "peak_rss_mb": ("peak_rss_mb", "max"),
    "peak_gpu_memory_mb": ("peak_gpu_memory_mb", "max"),
    **{m: (m, "rate") for m in ("abstention_rate", "citation_rate", "fallback_rate", "tool_call_validity_rate",
                                "label_agreement", "label_flip_rate", "field_diff_rate")},
    **{m: (m, "value") for m in ("label_kappa", "confidence_psi", "confidence_ks")},
    "confidence_mean_shift": ("confidence_mean_shift", "mean"),
    **{m: (m, "rate") for m in ("row_flip_rate", "row_agreement", "row_invalid_rate")},
    **{m: (m, "value") for m in ("row_score_psi", "row_score_ks")},
    "row_score_change": ("row_score_change", "mean"),
    "row_score_change_p99": ("row_score_change", "p99"),
    "goodput": ("goodput", "rate"),
    "output_tokens_per_s": ("output_tokens_per_s", "p50"),
}
_LATENCY_NAME = re.compile(r"^latency_(p50|p90|p95|p99|mean)_ms$")
_TTFT_NAME = re.compile(r"^(?:ttft|time_to_first_token)_(p50|p90|p95|p99|mean)_ms$")
_ITL_NAME = re.compile(r"^inter_token_(p50|p90|p95|p99|mean)_ms$")
_PER_TOKEN_NAME = re.compile(r"^latency_per_token_(p50|p90|p95|p99|mean)_ms$")
_GENERAL_KEYS = {"metric", "aggregation", "segment", "severity", "per_segment", "description", "slo"}


@dataclass(frozen=True, slots=True)
class GateSpec:
    name: str
    metric: str
    aggregation: str
    comparison: Comparison
    direction: str  # "max" | "min"
    threshold: float  # relative: allowed fraction (0.10 = +10 %); absolute: value; delta: candidate - baseline
    condition_key: str
    segment: Mapping[str, str] | None = None
    per_segment: bool = True
    severity: Literal["blocking", "warning"] = "blocking"
    unit: str = ""
    description: str = field(default="")
    slo: Mapping[str, float] | None = None  # goodput only: SLO_METRICS name -> limit (ms)

    @property
    def threshold_text(self) -> str:
        if self.comparison == "relative":
            return f"<= +{self.threshold * 100:g} % vs baseline"
        sign = "<=" if self.direction == "max" else ">="
        value = f"{self.threshold * 100:g} %" if self.unit == "fraction" else f"{self.threshold:g}"
        if self.comparison == "delta":
            unit = f" {self.unit}" if self.unit in ("ms", "tokens") else ""
            return f"candidate - baseline {sign} {value}{unit}"
        return f"{sign} {value}"


_RATES = frozenset({"error_rate", "timeout_rate", "schema_pass_rate", "goodput", *DETECTOR_RATES})
_COUNTS = frozenset({"gpu_oom_events", "oom_kills", "restarts"})
_PEAKS = frozenset({"peak_rss_mb", "peak_gpu_memory_mb"})


def _refusal(metric: str, key: str) -> str:
    """Why a condition is refused for a metric: a setting must mean what it says, or not parse at all."""
    if metric in PAIR_METRICS:
        return f"{metric} compares the two versions already, so {key} has no baseline to be relative to"
    if metric == "output_tokens_per_s":
        return ("output_tokens_per_s takes an absolute limit; to compare the versions, gate latency_per_token_ms or "
                "inter_token_ms (the same speed, as a time)")
    if metric in _RATES and key == "maximum_regression_percent":
        return (f"{metric} is a rate: a percent change of a rate is not judged (write the allowed change in points "
                "as maximum_increase: 0.005, or an absolute limit as maximum: 0.01)")
    if metric in LATENCY_LIKE:
        return f"{metric} has no lower allowance on its change (minimum_delta); a slower candidate is the risk"
    return f"{key} is not judged for {metric}"


def _allowed_conditions(metric: str) -> tuple[str, ...]:
    """The condition keys that the gates implement for this metric, each with its own test."""
    if metric in PAIR_METRICS or metric == "output_tokens_per_s":
        return ("maximum", "minimum")
    if metric in LATENCY_LIKE:
        # maximum_increase: the paired bootstrap of the quantile (or mean) difference, in the metric's unit
        return ("maximum", "minimum", "maximum_regression_percent", "maximum_increase")
    if metric in _RATES:
        return ("maximum", "minimum", "maximum_increase", "minimum_delta")
    if metric == "review_score":
        return ("minimum_delta",)
    if metric in _COUNTS:
        return ("maximum",)
    if metric in _PEAKS:
        return ("maximum", "maximum_regression_percent")
    return tuple(CONDITIONS)



def parse_gates(raw: Mapping[str, Any] | None, where: str,
                locate: Callable[[list[str]], str] | None = None) -> tuple[GateSpec, ...]:
    """`locate(key path)` gives "file:line" for a key of the scenario (where it is known), so that a gate's
    error names its line like every other scenario error."""
    if not raw:
        return ()
    at: Callable[[list[str]], str] = locate or (lambda keys: where)

    def key_at(name: str) -> Callable[[str], str]:
        return lambda key: f"{at(['promotion_gates', name, key])}: promotion_gates.{name}"

    return tuple(_parse_one(name, body, f"{at(['promotion_gates', name])}: promotion_gates.{name}", key_at(name))
                 for name, body in raw.items())


def unseen_gate_values(gates: Iterable[GateSpec], seen: Mapping[str, Iterable[str]]) -> list[str]:
    """One message per gate scope (`segment: {name: value}`) whose value no replayed request has: such a gate
    can only end inconclusive, after the whole replay."""
    out = []
    for g in gates:
        for name, value in (g.segment or {}).items():
            values = sorted(set(seen.get(name, ())))
            if value not in values:
                shown = ", ".join(repr(v) for v in values[:20]) + (f", … ({len(values)} in all)" if len(values) > 20 else "")
                out.append(f"promotion_gates.{g.name}.segment: no request to replay has {name}={value!r} "
                           f"(values seen: {shown or 'none'})")
    return out


def _parse_one(name: str, body: Any, where: str, where_key: Callable[[str], str] | None = None) -> GateSpec:
    if not isinstance(body, Mapping):
        raise ScenarioError(f"{where}: expected a mapping of condition -> threshold, got {type(body).__name__}")
    if "metric" in body:
        metric = body["metric"]
        if metric not in METRICS:
            raise ScenarioError(f"{where}: unknown metric {metric!r} (known: {', '.join(sorted(METRICS))})")
        aggregation = body.get("aggregation", METRICS[metric][1])
    else:
        m = _LATENCY_NAME.match(name)
        t = _TTFT_NAME.match(name) or _ITL_NAME.match(name)
        per_token = _PER_TOKEN_NAME.match(name)
        if m:
            metric, aggregation = "latency_ms", m.group(1)
        elif per_token:
            metric, aggregation = "latency_per_token_ms", per_token.group(1)
        elif t:
            metric, aggregation = ("time_to_first_token_ms" if t.re is _TTFT_NAME else "inter_token_ms"), t.group(1)
        elif name in _SEED_NAMES:
            metric, aggregation = _SEED_NAMES[name]
        else:
            known = sorted(["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p95_ms", "inter_token_p95_ms",
                            "latency_per_token_p95_ms", *_SEED_NAMES])
            raise ScenarioError(
                f"{where}: unknown gate {name!r}; use one of {', '.join(known)} or give `metric:` explicitly")
    aggs, _, unit = METRICS[metric]
    if aggregation not in aggs:
        raise ScenarioError(f"{where}: aggregation {aggregation!r} not valid for {metric} (valid: {', '.join(aggs)})")
    conditions = [k for k in body if k in CONDITIONS]
    unknown = [k for k in body if k not in CONDITIONS and k not in _GENERAL_KEYS]
    if unknown:
        raise ScenarioError(
            f"{where_key(unknown[0]) if where_key else where}: unknown key {unknown[0]!r} (conditions: {', '.join(CONDITIONS)}; other keys: {', '.join(sorted(_GENERAL_KEYS))})")
    if len(conditions) != 1:
        raise ScenarioError(f"{where}: needs exactly one condition of {', '.join(CONDITIONS)}, found {conditions or 'none'}")
    key = conditions[0]
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"{where}.{key}: expected a number, got {value!r}")
    comparison, direction = CONDITIONS[key]
    allowed = _allowed_conditions(metric)
    if key not in allowed:
        raise ScenarioError(f"{where_key(key) if where_key else where}.{key}: {_refusal(metric, key)}; "
                            f"use {' or '.join(allowed)}")
    slo = _slo(body.get("slo"), metric, where)
    threshold = float(value) / 100.0 if key == "maximum_regression_percent" else float(value)
    low = -1.0 if comparison == "delta" else 0.0
    if unit == "fraction" and comparison != "relative" and not low <= threshold <= 1.0:
        raise ScenarioError(f"{where}.{key}: {value!r} is outside {low:g} to 1: {metric} is a fraction "
                            f"(write 1 % as 0.01)")
    if comparison == "relative" and threshold <= -1.0:
        raise ScenarioError(f"{where}.{key}: {value!r} is -100 % or less, which no candidate can meet")
    severity = body.get("severity", "blocking")
    if severity not in ("blocking", "warning"):
        raise ScenarioError(f"{where}.severity: expected blocking or warning, got {severity!r}")
    segment = body.get("segment")
    if segment is not None and (not isinstance(segment, Mapping)
                                or not all(isinstance(v, str) for v in segment.values())):
        raise ScenarioError(f"{where}.segment: expected a mapping of segment name -> value, e.g. {{tenant: enterprise}}")
    per_segment = body.get("per_segment", segment is None)
    if not isinstance(per_segment, bool):
        raise ScenarioError(f"{where}.per_segment: expected true or false")
    return GateSpec(name=name, metric=metric, aggregation=aggregation, comparison=comparison, direction=direction,
                    threshold=threshold, condition_key=key, segment=dict(segment) if segment else None,
                    per_segment=per_segment, severity=severity, unit=unit,
                    description=str(body.get("description", "")), slo=slo)


def _slo(raw: Any, metric: str, where: str) -> dict[str, float] | None:
    """goodput's SLOs: {time_to_first_token_ms: 500, inter_token_ms: 50, latency_ms: ...}, at least one."""
    if metric != "goodput":
        if raw is not None:
            raise ScenarioError(f"{where}.slo: only the goodput metric takes SLOs")
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise ScenarioError(f"{where}: goodput needs `slo:` with limits in ms for one or more of "
                            f"{', '.join(SLO_METRICS)}, e.g. {{time_to_first_token_ms: 500, inter_token_ms: 50}}")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key not in SLO_METRICS:
            raise ScenarioError(f"{where}.slo: unknown key {key!r} (known: {', '.join(SLO_METRICS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ScenarioError(f"{where}.slo.{key}: expected a positive number of ms, got {value!r}")
        out[key] = float(value)
    return out
