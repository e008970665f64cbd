"""The report's charts: matplotlib (Agg, no pyplot state), rendered to PNG data: URIs.

Each chart takes the down-sampled series of harness.report.queries, never raw legs, so its cost and
size do not grow with the run. Readable in print and greyscale: baseline is a solid dark line,
candidate a dashed lighter one with markers, every axis is labelled with its unit."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # before anything draws; harmless if already set

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from PIL import Image  # noqa: E402  - matplotlib's own dependency

__all__ = ["Chart", "latency_cdf_chart", "latency_over_time_chart", "resource_timeline_chart", "STYLE"]

# version -> line style; the pair stays distinguishable without colour (solid vs dashed + markers)
STYLE: dict[str, dict[str, Any]] = {
    "baseline": {"color": "#1f3b63", "linestyle": "-", "linewidth": 1.8},
    "candidate": {"color": "#d9822b", "linestyle": "--", "linewidth": 1.8, "marker": "o", "markersize": 2.5,
                  "markevery": 0.08},
}
_CSS_DPI = 100  # a figure inch is shown as 100 CSS pixels
_DPI = 150  # and drawn with 1.5 device pixels per CSS pixel: sharp on high-density screens and in print
_PALETTE_COLOURS = 64  # charts use a handful of colours; a palette PNG is about a quarter of the RGBA one
_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8.5,
       "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "font.family": "DejaVu Sans"}


def _style(version: str) -> dict[str, Any]:
    return dict(STYLE.get(version, {"color": "#555555", "linestyle": ":", "linewidth": 1.5}))


def _figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1,
            height_ratios: Sequence[float] | None = None, sharex: bool = False) -> tuple[Figure, list[Axes]]:
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width_in, height_in), dpi=_CSS_DPI, layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False, sharex=sharex,
                            gridspec_kw={"height_ratios": height_ratios} if height_ratios else None)
    axes = [ax for row in grid for ax in row]
    for ax in axes:
        ax.grid(True, which="major", color="#d0d0d0", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


@dataclass(frozen=True)
class Chart:
    uri: str  # data:image/png;base64,...
    width: int  # CSS pixels
    height: int


def _png_uri(fig: Figure) -> Chart:
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    small = io.BytesIO()
    image.quantize(colors=_PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        small, format="PNG", optimize=True)
    width_in, height_in = fig.get_size_inches()
    return Chart(uri="data:image/png;base64," + base64.b64encode(small.getvalue()).decode("ascii"),
                 width=round(width_in * _CSS_DPI), height=round(height_in * _CSS_DPI))


def _time_axis(max_t_s: float) -> tuple[float, str]:
    """(divisor, label): seconds for short runs, minutes or hours for long ones."""
    if max_t_s > 3 * 3600:
        return 3600.0, "time since replay start (h)"
    if max_t_s > 600:
        return 60.0, "time since replay start (min)"
    return 1.0, "time since replay start (s)"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    if seconds >= 1:
        return f"{seconds:g} s"
    return f"{seconds * 1000:g} ms"


def _ms_formatter(value: float, _pos: int) -> str:
    return f"{value:g}" if value >= 1 else f"{value:.2g}"


def latency_cdf_chart(cdf: dict[str, list[tuple[float, float]]], n: dict[str, int] | None = None) -> Chart | None:
    """Left: the CDF of latency (log ms). Right: the tail, the fraction of requests slower than x (log-log),
    where p99 and p99.9 differences show; each version's tail stops where fewer than one request is left
    beyond the quantile (1 - q < 1/n), below which the quantiles are interpolation, not data."""
    series = {v: pts for v, pts in cdf.items() if pts}
    if not series:
        return None
    fig, (body, tail) = _figure(10.0, 3.5, 1, 2)
    for version, pts in series.items():
        xs = [max(ms, 1e-3) for _, ms in pts]
        body.plot(xs, [100 * q for q, _ in pts], label=version, **_style(version))
        floor = 1.0 / n[version] if n and n.get(version) else 0.0
        tail_pts = [(1 - q, max(ms, 1e-3)) for q, ms in pts if 0.5 <= q < 1 and 1 - q >= floor - 1e-12]
        if tail_pts:
            tail.plot([ms for _, ms in tail_pts], [100 * f for f, _ in tail_pts], label=version, **_style(version))
    for ax in (body, tail):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_ms_formatter))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency from intended send time (ms, log scale)")
        if ax.get_legend_handles_labels()[0]:  # a tail with too few requests to draw has nothing to name
            ax.legend(loc="lower right" if ax is body else "lower left", frameon=False)
    body.set_ylabel("requests at or below latency (%)")
    body.set_ylim(0, 100)
    body.set_title("Latency distribution (CDF)")
    for q in (50, 95, 99):
        body.axhline(q, color="#888888", linewidth=0.6, linestyle=":")
    tail.set_yscale("log")
    tail.yaxis.set_major_locator(LogLocator(base=10))
    tail.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    tail.set_ylabel("requests slower than latency (%, log scale)")
    tail.set_title("Tail: p50 and beyond")
    for pct, name in ((5, "p95"), (1, "p99"), (0.1, "p99.9")):
        tail.axhline(pct, color="#888888", linewidth=0.6, linestyle=":")
        tail.annotate(name, xy=(1.0, pct), xycoords=("axes fraction", "data"), fontsize=7.5, color="#555555",
                      ha="right", va="bottom")
    return _png_uri(fig)


def latency_over_time_chart(over_time: dict[str, list[dict[str, float]]], bucket_s: float) -> Chart | None:
    """p50 and p95 latency per time bucket for both versions, and the share of failed legs per bucket."""
    series = {v: rows for v, rows in over_time.items() if rows}
    if not series:
        return None
    max_t = max(r["t_s"] for rows in series.values() for r in rows)
    div, xlabel = _time_axis(max_t)
    fig, (lat, fail) = _figure(10.0, 4.4, 2, 1, height_ratios=[3, 1.3], sharex=True)
    for version, rows in series.items():
        ts = [r["t_s"] / div for r in rows]
        style = _style(version)
        lat.plot(ts, [r["p95_ms"] for r in rows], label=f"{version} p95", **style)
        thin = {**style, "linewidth": 1.0, "marker": None, "alpha": 0.85,
                "linestyle": ":" if version == "baseline" else "-."}
        lat.plot(ts, [r["p50_ms"] for r in rows], label=f"{version} p50", **thin)
        fail.plot(ts, [100 * (r["failed_fraction"] or 0) for r in rows], label=version,
                  **{**style, "linewidth": 1.3})
    lat.set_ylabel("latency (ms)")
    top = max((r["p95_ms"] or 0) for rows in series.values() for r in rows)
    lat.set_ylim(0, top * 1.3 if top > 0 else 1)  # headroom for the legend
    lat.set_title(f"Latency over time (p50 and p95 of each {_duration(bucket_s)} bucket)")
    lat.legend(ncols=4, loc="upper left", frameon=False)
    fail.set_ylabel("failed legs (%)")
    fail.set_ylim(bottom=0)
    fail.set_xlabel(xlabel)
    return _png_uri(fig)


def resource_timeline_chart(memory: dict[str, list[dict[str, float | None]]]) -> Chart | None:
    """Resident memory of both servers over time (and GPU memory when it was sampled), with CPU use."""
    series = {v: rows for v, rows in memory.items() if rows}
    if not series:
        return None
    has_gpu = any(r.get("gpu_memory_mb") is not None for rows in series.values() for r in rows)
    max_t = max(float(r["t_s"] or 0) for rows in series.values() for r in rows)
    div, xlabel = _time_axis(max_t)
    rows_n = 3 if has_gpu else 2
    fig, axes = _figure(6.2, 5.6 if has_gpu else 4.6, rows_n, 1,
                        height_ratios=[3, 2, 1.5] if has_gpu else [3, 1.5], sharex=True)
    rss_ax, cpu_ax = axes[0], axes[-1]
    for version, rows in series.items():
        ts = [float(r["t_s"] or 0) / div for r in rows]
        style = _style(version)
        rss_ax.plot(ts, [r["rss_mb"] for r in rows], label=version, **style)
        if has_gpu:
            axes[1].plot(ts, [r.get("gpu_memory_mb") for r in rows], label=version, **style)
        cpu_ax.plot(ts, [r["cpu_percent"] for r in rows], label=version, **{**style, "linewidth": 1.2})
    rss_ax.set_ylabel("resident memory (MB)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.set_title("Memory over time")
    rss_ax.legend(loc="best", frameon=False)
    if has_gpu:
        axes[1].set_ylabel("GPU memory (MB)")
        axes[1].set_ylim(bottom=0)
    cpu_ax.set_ylabel("CPU (%)")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_xlabel(xlabel)
    return _png_uri(fig)
