"""The data flows one way: a stage never imports a later one, and only harness.replay imports locust."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "harness"

# stage of each top-level part of the package, in data-flow order
STAGES = {
    "errors": 0, "error_kinds": 0, "content_encoding": 0, "frames": 0, "numbers": 0, "crash": 0, "jsonpath": 0, "scenario": 0, "gate_config": 0, "send_headers": 0,
    "__init__": 9, "__main__": 9,  # the public facade, lazily importing every stage
    "traffic": 1,
    "protocols": 2, "compat": 2,
    "capture": 2,  # production -> capture files: reads the record format and redaction, nothing later
    "replay": 3, "monitor": 3,
    "store": 4, "store_writer": 4, "store_child": 4,
    "analysis": 5,
    "gates": 6, "fidelity": 6, "evidence": 6, "answered": 6, "attribution": 6,
    "schedule": 7, "report": 7, "outputs": 8, "aa_reference": 8, "scores": 8, "query": 8, "run_folder": 8,
    "run": 9, "validate": 9, "cli": 9, "demo": 9,
    "shadow": 9,  # live shadow: every stage, like run, but on asyncio
}


def _part(module: str) -> str:
    return module.split(".")[1] if module.startswith("harness.") else module


def _imports(path: Path) -> list[str]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if not node.module:
                    out += [f"{mod}.{a.name}" for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append(mod)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _stage_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def test_every_part_has_a_stage() -> None:
    parts = {_stage_of(p) for p in PKG.rglob("*.py")}
    assert parts <= set(STAGES), f"add {parts - set(STAGES)} to STAGES"


def test_no_stage_imports_a_later_one() -> None:
    problems = []
    for path in PKG.rglob("*.py"):
        mine = STAGES[_stage_of(path)]
        for mod in _imports(path):
            if not mod.startswith("harness."):
                continue
            theirs = STAGES.get(_part(mod))
            if theirs is not None and theirs > mine:
                problems.append(f"{path.relative_to(PKG.parent)} imports {mod}")
    assert not problems, "\n".join(problems)


def test_only_replay_imports_locust() -> None:
    offenders = [str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")
                 if _stage_of(p) != "replay" and any(m.split(".")[0] in ("locust", "gevent", "geventhttpclient", "grpc")
                                                     for m in _imports(p))]
    assert not offenders, offenders


# The proxies run on asyncio (aiohttp); gevent's monkey patching must never be in their process.
ASYNCIO_PARTS = ("capture", "shadow")


def test_the_proxies_never_load_gevent() -> None:
    import subprocess
    import sys

    code = ("import sys, harness.cli, harness.capture.proxy, harness.capture.logger_sink, harness.capture.middleware, "
            "harness.shadow.run, harness.shadow.snapshot; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent', 'geventhttpclient')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_proxies_import_no_replay_module_that_patches() -> None:
    offenders = []
    for part in ASYNCIO_PARTS:
        for path in (PKG / part).rglob("*.py"):
            for mod in _imports(path):
                if mod.startswith("harness.replay") and mod != "harness.replay.leg":
                    offenders.append(f"{path.relative_to(PKG.parent)} imports {mod}")
    assert not offenders, offenders
