"""gate_report.html: the one page that goes with a release.

Self-contained and static: inline CSS, charts as PNG data: URIs, no script, nothing fetched at view
time; every string from the run (outputs, segment values, reasons) goes through Jinja2's autoescaping.
Its size is bounded whatever the run: charts are drawn from DuckDB aggregates and every table of
evidence is capped (harness.report.queries, harness.report.sections)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from ..store import open_results
from . import charts
from .heatmap import segment_heatmap
from .outputs_view import noise_floor_view, output_diff_view, schedule_view
from .rows_view import rows_view
from .queries import BAD_RECORDS_SHOWN, EXAMPLE_OUTPUT_CHARS, EXAMPLES_PER_KIND, ReportData, load_report_data
from .sections import (accounting_rows, example_groups, fidelity_rows, gate_sections, metadata_rows,
                       version_table, worst_segment_rows)

__all__ = ["write_report", "render_report"]

TEMPLATE = "template.html.j2"
VERDICT_CLASS = {"PROMOTE": "promote", "HOLD": "hold", "BLOCK": "block", "INCOMPLETE": "hold"}


def _break_opportunities(text: Any) -> markupsafe.Markup:
    """Escapes text and lets the browser wrap long identifiers after "_", "/", "&" or "=" (<wbr>)."""
    out = markupsafe.escape(str(text))
    for sep in ("_", "/", "="):
        out = markupsafe.Markup(out.replace(sep, markupsafe.Markup(sep + "<wbr>")))
    return out


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "."), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["wbr"] = _break_opportunities
    return env


def _report_data(run_dir: Path) -> ReportData | None:
    db = run_dir / "results.duckdb"
    if not db.exists():
        return None
    con = open_results(db, read_only=True)
    try:
        return load_report_data(con)
    finally:
        con.close()


def _saturation(replay: dict[str, Any]) -> str | None:
    if not replay.get("saturated"):
        return None
    text = str(replay.get("warning") or f"send lag p99 above {replay.get('lag_bound_ms')} ms")
    prefix = "load not delivered: "
    return text[len(prefix):] if text.startswith(prefix) else text


def render_report(summary: dict[str, Any], data: ReportData | None) -> str:
    run = summary.get("run") or {}
    replay = summary.get("replay") or {}
    status = run.get("status") or "unknown"
    figures = {
        "cdf": charts.latency_cdf_chart(data.cdf, data.cdf_n) if data else None,
        "over_time": charts.latency_over_time_chart(data.over_time, data.bucket_s) if data else None,
        "resources": charts.resource_timeline_chart(data.memory) if data else None,
    }
    context = {
        "reasons": [str(r) for r in summary.get("verdict_reasons") or []],
        "counts": summary.get("counts") or {},
        "run": run,
        "verdict": summary.get("verdict") or "UNKNOWN",
        "provisional_verdict": summary.get("provisional_verdict"),
        "verdict_class": VERDICT_CLASS.get(str(summary.get("verdict")), "hold"),
        "incomplete": status != "complete",
        "run_status": status,
        "status_reason": run.get("status_reason"),
        "saturation": _saturation(replay),
        # notes that have a banner of their own are not repeated
        "notes": [n for n in summary.get("notes") or [] if n != replay.get("warning")
                  and not str(n).startswith(("Incomplete run", "Accounting mismatch"))],
        "gates": gate_sections(summary.get("gates") or []),
        "versions": version_table(summary, data),
        "heatmap": segment_heatmap(summary),
        "worst": worst_segment_rows(summary),
        "explanations": summary.get("explanations") or [],
        "charts": figures,
        "examples": example_groups(data),
        "examples_per_kind": EXAMPLES_PER_KIND,
        "example_chars": EXAMPLE_OUTPUT_CHARS,
        "bad_records": data.bad_records if data else [],
        "bad_total": data.bad_records_total if data else (summary.get("counts") or {}).get("bad_records", 0),
        "bad_shown_max": BAD_RECORDS_SHOWN,
        "fidelity": fidelity_rows(summary),
        "accounting": accounting_rows(summary),
        "metadata": metadata_rows(summary),
        "schedule": schedule_view(summary),
        "outputs": output_diff_view(summary),
        "rows": rows_view(summary),
        "noise": noise_floor_view(summary),
        "has_db": data is not None,
    }
    return _environment().get_template(TEMPLATE).render(**context)


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    out = run_dir / "gate_report.html"
    out.write_text(render_report(summary, _report_data(run_dir)), encoding="utf-8")
    return out
