"""No evidence, no PASS: which sources a resource gate had, and what it is without them.

The monitor records per version the sources that gave values during the run (harness.monitor
`sources()`, stored as the `resource_sources` event): the server process (by PID, PID file or as the
listener on the target's port), the kernel log (dmesg, readable by this user), a Prometheus URL, the
server's own OOM counter on it, NVML. Each resource metric accepts these (docs/judgement.md):

    peak_rss_mb          the process, or a Prometheus memory gauge
    peak_gpu_memory_mb   NVML
    restarts             the process
    oom_kills            the kernel log (with the process watched), or the server's OOM counter
    gpu_oom_events       the server's OOM counter, or NVML with the process watched

A version the gate reads (the candidate; both versions for a relative limit) with none of its sources
makes the result INCONCLUSIVE with that reason; otherwise the result names its sources.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .gates import GateResult

__all__ = ["RESOURCE_METRICS", "sources_for", "apply_evidence"]

RESOURCE_METRICS = frozenset({"peak_rss_mb", "peak_gpu_memory_mb", "restarts", "oom_kills", "gpu_oom_events"})

_WHAT = {"peak_rss_mb": "peak memory", "peak_gpu_memory_mb": "peak GPU memory", "restarts": "restarts",
         "oom_kills": "OOM kills", "gpu_oom_events": "GPU OOM events"}
_NEEDS = {
    "peak_rss_mb": "the server process on this machine (targets.X.pid, pid_file, or a local URL) or a Prometheus "
                   "memory gauge (targets.X.metrics_url)",
    "peak_gpu_memory_mb": "NVML samples of the server process (a GPU and nvidia-ml-py on this machine)",
    "restarts": "the server process on this machine (targets.X.pid, pid_file, or a local URL)",
    "oom_kills": "the kernel log readable by this user with the server process watched, or the server's OOM "
                 "counter (targets.X.metrics_url and oom_counter)",
    "gpu_oom_events": "the server's OOM counter (targets.X.metrics_url and oom_counter), or NVML samples with "
                      "the server process watched",
}


def sources_for(metric: str, src: Mapping[str, Any] | None) -> list[str]:
    """The sources of one version that count for this metric (empty: no evidence)."""
    if not src:
        return []
    process, prom, counter = src.get("process"), src.get("prometheus"), src.get("oom_counter")
    counter_text = f"OOM counter {counter} at {prom or 'its metrics URL'}" if counter else None
    candidates: dict[str, list[str | None]] = {
        "peak_rss_mb": [process, f"Prometheus {prom}" if prom else None],
        "peak_gpu_memory_mb": [f"NVML ({process})" if src.get("nvml") else None],
        "restarts": [process],
        "oom_kills": [f"kernel log with {process}" if src.get("kernel_log") and process else None, counter_text],
        "gpu_oom_events": [counter_text, f"NVML with {process}" if src.get("nvml") and process else None],
    }
    return [s for s in candidates.get(metric, []) if s]


def apply_evidence(results: list[GateResult], sources: Mapping[str, Mapping[str, Any]],
                   versions: tuple[str, ...]) -> list[GateResult]:
    return [_judge(r, sources, versions) if r.metric in RESOURCE_METRICS else r for r in results]


def _judge(r: GateResult, sources: Mapping[str, Mapping[str, Any]], versions: tuple[str, ...]) -> GateResult:
    target = "candidate" if "candidate" in versions else "baseline"
    read = ("baseline", target) if r.comparison == "relative" and target != "baseline" else (target,)
    # A/A: the candidate is the baseline's server, sampled once under "baseline"
    had = {v: sources_for(r.metric, sources.get(v) or sources.get("baseline")) for v in read}
    missing = [v for v in read if not had[v]]
    if missing:
        who = " and ".join(f"the {v}" for v in missing)
        return replace(r, status="inconclusive",
                       reason=f"No evidence of {_WHAT[r.metric]} for {who}: it needs {_NEEDS[r.metric]}. "
                              f"Not judged (was: {r.reason})")
    named = "; ".join(f"{v}: {', '.join(had[v])}" for v in read)
    return replace(r, reason=f"{r.reason} Sources: {named}.")
