"""gate_report.html (first version)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

__all__ = ["write_report"]

_T = """<!doctype html><html><head><meta charset="utf-8"><title>{{ s.run.scenario }}: {{ s.verdict }}</title></head>
<body><h1>{{ s.verdict }}</h1><ul>{% for r in s.verdict_reasons %}<li>{{ r }}</li>{% endfor %}</ul>
<table>{% for g in s.gates %}<tr><td>{{ g.name }}</td><td>{{ g.segment or 'overall' }}</td><td>{{ g.status }}</td><td>{{ g.reason }}</td></tr>{% endfor %}</table>
</body></html>"""


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    env = jinja2.Environment(autoescape=True)
    out = run_dir / "gate_report.html"
    out.write_text(env.from_string(_T).render(s=summary), encoding="utf-8")
    return out
