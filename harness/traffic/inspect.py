"""`harness traffic inspect FILE`: what a capture holds, before anything is replayed.

One streaming pass: records, time span, rate per second (peak, mean, burstiness = peak / mean and the
coefficient of variation of per-second counts), methods, routes, segment breakdown (with a scenario),
body sizes, and the bad records with their lines. Memory grows with the span in seconds and the
number of distinct routes (capped), not with the number of records."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrafficError
from .readers import detect_format, iter_records, record_unit
from .record import BadRecord
from .redaction import Redactor
from .segments import SegmentEvaluator, route_template

__all__ = ["Inspection", "inspect_capture", "format_inspection"]

MAX_BAD_LISTED = 50
MAX_ROUTES = 200
PLOT_POINTS = 20_000  # at most this many points on the rate plot (a long capture: one per stretch of seconds)


@dataclass
class Inspection:
    path: Path
    format: str
    records: int = 0
    bad: int = 0
    bad_listed: list[tuple[int, str]] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None
    out_of_order: int = 0
    per_second: Counter[int] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    segments: dict[str, Counter[str]] = field(default_factory=dict)
    size_hist: Counter[int] = field(default_factory=Counter)  # log2 buckets of body bytes
    size_total: int = 0
    size_max: int = 0

    @property
    def span_s(self) -> float:
        return (self.last_ts - self.first_ts) if self.first_ts is not None and self.last_ts is not None else 0.0

    def rate_stats(self) -> dict[str, float]:
        if not self.per_second:
            return {"mean_rps": 0.0, "peak_rps": 0.0, "burstiness": 0.0, "cv": 0.0}
        # over every second of the span, the empty ones as zeros, without a list of them: one record with a
        # stray timestamp (ts: 0) makes a span of decades
        seconds = max(self.per_second) - min(self.per_second) + 1
        counts = np.array(list(self.per_second.values()), dtype=float)
        mean = float(counts.sum()) / seconds
        std = math.sqrt(max(float((counts ** 2).sum()) / seconds - mean * mean, 0.0))
        peak = float(counts.max())
        return {"mean_rps": mean, "peak_rps": peak, "burstiness": peak / mean if mean else 0.0,
                "cv": std / mean if mean else 0.0}

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "records": self.records, "bad_records": self.bad,
                "span_s": self.span_s, "out_of_order": self.out_of_order, **self.rate_stats(),
                "methods": dict(self.methods), "routes": dict(self.routes.most_common(MAX_ROUTES)),
                "segments": {k: dict(v) for k, v in self.segments.items()},
                "mean_body_bytes": self.size_total / self.records if self.records else 0, "max_body_bytes": self.size_max,
                "bad": [{"line": ln, "reason": r} for ln, r in self.bad_listed]}


def inspect_capture(path: Path, fmt: str | None = None, scenario_path: Path | None = None,
                    plot: Path | None = None) -> Inspection:
    fmt = detect_format(path, fmt)
    segments = None
    trace = None
    if scenario_path is not None:
        from ..scenario import load_scenario

        scenario = load_scenario(scenario_path)
        segments = SegmentEvaluator(scenario.segments)
        trace = scenario.traffic.trace
    redactor = Redactor()
    ins = Inspection(path=path, format=fmt)
    last = None
    for item in iter_records(path, fmt, trace):
        if isinstance(item, BadRecord):
            ins.bad += 1
            if len(ins.bad_listed) < MAX_BAD_LISTED:
                ins.bad_listed.append((item.line, redactor.reason(item.reason)))
            continue
        ins.records += 1
        ts = item.ts
        if last is not None and ts < last:
            ins.out_of_order += 1
        last = ts
        ins.first_ts = ts if ins.first_ts is None else min(ins.first_ts, ts)
        ins.last_ts = ts if ins.last_ts is None else max(ins.last_ts, ts)
        ins.per_second[int(math.floor(ts))] += 1
        ins.methods["gRPC" if "grpc_method" in item.meta else item.method] += 1
        route = route_template(item.path)
        if route in ins.routes or len(ins.routes) < MAX_ROUTES:
            ins.routes[route] += 1
        else:
            ins.routes["(other routes)"] += 1
        n = len(item.body)
        ins.size_total += n
        ins.size_max = max(ins.size_max, n)
        ins.size_hist[n.bit_length()] += 1
        if segments is not None:
            for name, value in segments.values(redactor.request(item)).items():
                ins.segments.setdefault(name, Counter())[value] += 1
    if plot is not None:
        _plot(ins, plot)
    return ins


def _plot(ins: Inspection, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    if ins.per_second:
        lo, hi = min(ins.per_second), max(ins.per_second)
        step = -(-(hi - lo + 1) // PLOT_POINTS)  # seconds a point: the mean rate of each stretch
        rates = np.zeros(-(-(hi - lo + 1) // step))
        for second, n in ins.per_second.items():
            rates[(second - lo) // step] += n / step
        ax.plot(np.arange(len(rates)) * step, rates, lw=0.8, color="#1f4e79")
    ax.set_xlabel("captured time from the first record (s)")
    ax.set_ylabel("requests per second")
    ax.set_title(f"{ins.path.name}: {ins.records} records")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(out)
    except OSError as exc:  # a missing folder, a read-only place: the user's path, not a bug
        raise TrafficError(f"{out}: cannot write the plot: {exc.strerror or exc}") from None
    except ValueError as exc:  # matplotlib: an extension it cannot write ("rate.txt")
        raise TrafficError(f"{out}: cannot write the plot: {exc}") from None
    finally:
        plt.close(fig)


def format_inspection(ins: Inspection) -> str:
    r = ins.rate_stats()
    lines = [f"{ins.path} ({ins.format})",
             f"  records       {ins.records} ({ins.bad} bad)",
             f"  time span     {ins.span_s:.1f} s" + (f", {ins.out_of_order} records out of time order (replayed in "
                                                        "time order)" if ins.out_of_order else ""),
             f"  rate          mean {r['mean_rps']:.1f}/s, peak {r['peak_rps']:.0f}/s, burstiness (peak/mean) "
             f"{r['burstiness']:.1f}, CV of per-second counts {r['cv']:.2f}",
             f"  body size     mean {ins.size_total / ins.records if ins.records else 0:.0f} B, max {ins.size_max} B",
             "  methods       " + ", ".join(f"{m} {n}" for m, n in ins.methods.most_common())]
    lines.append("  routes")
    lines += [f"    {n:>8}  {route}" for route, n in ins.routes.most_common(20)]
    for name, counts in ins.segments.items():
        lines.append(f"  segment {name}")
        lines += [f"    {n:>8}  {value}" for value, n in counts.most_common(20)]
    if ins.bad:
        lines.append(f"  bad records ({ins.bad})")
        lines += [f"    {record_unit(ins.format)} {ln}: {reason}" for ln, reason in ins.bad_listed]
        if ins.bad > len(ins.bad_listed):
            lines.append(f"    ... {ins.bad - len(ins.bad_listed)} more")
    return "\n".join(lines) + "\n"
