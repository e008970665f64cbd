"""Resource gates: OOM events, restarts and peak memory of each version."""
from __future__ import annotations

from dataclasses import dataclass

from ..gate_config import GateSpec
from .result import GateResult, _result


@dataclass(frozen=True)
class ResourceSummary:
    peak_rss_mb: dict[str, float | None]
    restarts: dict[str, int]
    oom_events: dict[str, int]
    peak_gpu_memory_mb: dict[str, float | None]
    gpu_sampled: bool
    samples: dict[str, int]


_RESOURCE_METRICS = {"gpu_oom_events", "oom_kills", "restarts", "peak_rss_mb", "peak_gpu_memory_mb"}


def _resource(spec: GateSpec, res: ResourceSummary | None, n_requests: int, alpha: float) -> GateResult:
    if res is None:
        return _result(spec, None, baseline=None, candidate=None, observed=None, ci=None, n=0, status="inconclusive",
                       reason="No resource samples were recorded.")
    m = spec.metric
    target = "candidate" if "candidate" in res.restarts else "baseline"
    if m in ("gpu_oom_events", "oom_kills", "restarts"):
        counts = res.oom_events if m != "restarts" else res.restarts
        k = counts.get(target, 0)
        base = counts.get("baseline")
        status = "pass" if k <= spec.threshold else "fail"
        note = ""
        if m == "gpu_oom_events" and not res.gpu_sampled:
            note = " No GPU was sampled (NVML unavailable), so only OOM kills of the server process could be seen."
        bound = 1 - alpha ** (1 / n_requests) if n_requests else 1.0
        per = f" ({k} in {n_requests} requests: rate upper bound {100 * bound:.3f} %, about 3/n)" if k == 0 else ""
        return _result(spec, None, baseline=base, candidate=k, observed=k, ci=None, n=n_requests, status=status,
                       effect=float(k - (base or 0)),
                       reason=f"{target.capitalize()} {m.replace('_', ' ')}: {k}{per} vs {spec.threshold_text}: "
                              f"{status}.{note}")
    peaks = res.peak_rss_mb if m == "peak_rss_mb" else res.peak_gpu_memory_mb
    b, c = peaks.get("baseline"), peaks.get(target)
    if c is None or (spec.comparison == "relative" and not b):
        return _result(spec, None, baseline=b, candidate=c, observed=None, ci=None, n=res.samples.get(target, 0),
                       status="inconclusive", reason=f"No {m} samples for the {target}{'' if c else ''}.")
    observed = c / b - 1 if spec.comparison == "relative" and b else c
    ok = observed <= spec.threshold if spec.direction == "max" else observed >= spec.threshold
    status = "pass" if ok else "fail"
    shown = f"{100 * observed:+.1f} %" if spec.comparison == "relative" else f"{observed:.0f} MB"
    return _result(spec, None, baseline=b, candidate=c, observed=observed, ci=None, n=res.samples.get(target, 0),
                   status=status, effect=observed,
                   reason=f"Peak {'RSS' if m == 'peak_rss_mb' else 'GPU memory'} {b or 0:.0f} -> {c:.0f} MB ({shown}) "
                          f"vs {spec.threshold_text}: {status}.")

