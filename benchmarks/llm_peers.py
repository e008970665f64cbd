"""Issue 20, item 4: harness against NVIDIA AIPerf (and GuideLLM where it installs) on the same streaming
server (benchmarks/_stream_server.py, injected TTFT and inter-token gap) and the same Mooncake-style trace,
one tool after the other in the same run (a fresh server for each): per-request TTFT and inter-token error against the injected
truth, every request recorded, the streams the server saw open at once, and the CPU seconds each tool
spent per stream (its process tree's user + system time, from the rusage of the reaped children).

The peers are installed from PyPI into their own virtual environments under benchmarks/out/peers (they pin
their own dependencies): aiperf==0.13.0, guidellm==0.8.1. Offline, AIPerf needs a local tokenizer it will
load in offline mode: a byte-level BPE trained here with the `tokenizers` package on the repository's own
text, laid out as a HuggingFace cache entry `local/tok` (a plain folder path is rejected in offline mode).
harness replays the trace baseline-only against the same one server (the paired figures are in
llm_streams.py). AIPerf replays the trace with its fixed schedule (timestamps), as harness does; GuideLLM
with its replay profile (schedule_turn timestamp; its mooncake reader reads timestamps as seconds, so
time_scale 0.001). A tool's "records" are the requests it reported; the server counts what was sent.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/llm_peers.py --concurrency 50 200 500
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
import llm_streams as ls  # noqa: E402

PEERS = c.OUT_ROOT / "peers"
AIPERF = "aiperf==0.13.0"
GUIDELLM = "guidellm==0.8.1"
_TRAIN_TOKENIZER = r"""
import glob, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
files = sorted(glob.glob(sys.argv[1] + "/harness/**/*.py", recursive=True)) + sorted(glob.glob(sys.argv[1] + "/*.md"))
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train(files, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(sys.argv[2])
"""


def venv(name: str, spec: str) -> Path | None:
    d = PEERS / name
    if not (d / ".installed").exists():
        print(f"[setup] {spec} into {d}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
        r = subprocess.run([str(d / "bin" / "pip"), "install", "-q", spec], capture_output=True, text=True)
        if r.returncode:
            print(f"[setup] {spec} failed: {r.stderr[-500:]}", flush=True)
            return None
        (d / ".installed").touch()
    return d


def hf_home(aiperf: Path) -> Path:
    home = PEERS / "hf"
    snap = home / "hub" / "models--local--tok" / "snapshots" / ("0" * 40)
    if not (snap / "tokenizer.json").exists():
        snap.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(aiperf / "bin" / "python"), "-c", _TRAIN_TOKENIZER, str(c.ROOT), str(snap)], check=True,
                       capture_output=True)
        (home / "hub" / "models--local--tok" / "refs").mkdir(exist_ok=True)
        (home / "hub" / "models--local--tok" / "refs" / "main").write_text("0" * 40)
    return home


def cpu_of(run: Callable[[], Any]) -> tuple[Any, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def q(xs: list[float], p: float) -> float | None:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p * len(s)))], 3) if s else None


def errors(ttft: list[float], itl_mean: list[float], itl_p95: list[float], args: argparse.Namespace) -> dict[str, Any]:
    te = [t - args.ttft_ms for t in ttft]
    return {"ttft_err_p50_ms": q(te, 0.5), "ttft_err_p99_ms": q(te, 0.99), "ttft_err_min_ms": q(te, 0.0),
            "itl_mean_abs_err_p99_ms": q([abs(x - args.itl_ms) for x in itl_mean], 0.99),
            "itl_p95_abs_err_p99_ms": q([abs(x - args.itl_ms) for x in itl_p95], 0.99)}


def run_harness(trace: Path, url: str, work: Path, args: argparse.Namespace, conc: int) -> dict[str, Any]:
    scen = work / "h.yaml"
    scen.write_text(f"""name: llm-peer
traffic: {{path: {trace}, format: mooncake, trace: {{seed: 1, model: m}}}}
targets: {{baseline: {{url: "{url}", protocol: openai}}}}
replay: {{mode: baseline-only, timeout_s: 60, max_in_flight: {2 * conc + 100}, allow: ["POST /v1/chat/completions"]}}
promotion_gates: {{error_rate: {{maximum: 0.01}}}}
""")
    run, cpu = cpu_of(lambda: c.run_harness(["run", str(scen)], out=work / "out", timeout_s=600))
    if run.run_dir is None:
        return {"error": run.output[-1000:], "cpu_s": cpu}
    rows = c.query(run.run_dir, "select time_to_first_token_ms, inter_token_ms_mean, inter_token_ms_p95, error_kind from legs")
    ok = [r for r in rows if r[3] is None and r[0] is not None]
    return {"records": len(rows), "errors": len(rows) - len(ok), "cpu_s": round(cpu, 2),
            **errors([r[0] for r in ok], [r[1] for r in ok if r[1] is not None], [r[2] for r in ok if r[2] is not None], args)}


def run_aiperf(aiperf: Path, trace: Path, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    art = work / "aiperf"
    env = {**os.environ, "HF_HOME": str(hf_home(aiperf)), "HF_HUB_OFFLINE": "1"}
    cmd = [str(aiperf / "bin" / "aiperf"), "profile", "--model", "m", "--url", url, "--endpoint-type", "chat",
           "--streaming", "--input-file", str(trace), "--custom-dataset-type", "mooncake_trace", "--tokenizer",
           "local/tok", "--artifact-dir", str(art), "--export-level", "records", "--ui-type", "none",
           "--use-server-token-count", "--request-timeout-seconds", "60"]
    proc, cpu = cpu_of(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900))
    path = art / "profile_export.jsonl"
    if not path.exists():
        return {"error": (proc.stdout + proc.stderr)[-1000:], "cpu_s": cpu}
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ok = [r["metrics"] for r in recs if "time_to_first_token" in r.get("metrics", {}) and not r.get("error")]

    def v(m: dict[str, Any], k: str) -> Any:
        return (m.get(k) or {}).get("value")

    p95 = []
    for m in ok:
        gaps = v(m, "inter_chunk_latency")
        if isinstance(gaps, list) and gaps:
            p95.append(q(gaps, 0.95) or 0.0)
    return {"records": len(recs), "errors": len(recs) - len(ok), "cpu_s": round(cpu, 2),
            **errors([v(m, "time_to_first_token") for m in ok],
                     [v(m, "inter_token_latency") for m in ok if v(m, "inter_token_latency") is not None], p95, args)}


def run_guidellm(guidellm: Path, aiperf: Path | None, trace: Path, url: str, work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """GuideLLM's trace replay (profile replay, schedule_turn timestamp) of the same Mooncake trace. Its
    mooncake reader takes the timestamps as seconds: time_scale 0.001 makes them the trace's milliseconds."""
    if aiperf is None:
        return {"error": "no tokenizer (it is trained with the aiperf venv's tokenizers package)"}
    tok = next((hf_home(aiperf) / "hub" / "models--local--tok" / "snapshots").iterdir())
    cfg = work / "guidellm.json"
    cfg.write_text(json.dumps({"metadata": {"name": "harness-peer", "description": "mooncake replay"}, "spec": {
        "backend": {"kind": "openai_http", "target": url, "model": "m"},
        "profile": {"kind": "replay", "schedule_turn": "timestamp", "time_scale": 0.001},
        "data": [{"kind": "mooncake", "source": {"kind": "json_file", "path": str(trace)}}],
        "tokenizer": {"kind": "huggingface_auto", "model": str(tok)}}, "benchmarks": [{}]}))
    out = work / "guidellm_out.json"
    cmd = [str(guidellm / "bin" / "guidellm"), "run", "-c", str(cfg), "--output", f"kind=json,path={out}",
           "--disable-console-interactive"]
    proc, cpu = cpu_of(lambda: subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                              text=True, timeout=900))
    if not out.exists():
        return {"error": (proc.stdout + proc.stderr)[-1000:], "cpu_s": cpu}
    reqs = json.loads(out.read_text())["benchmarks"][0]["requests"]
    ok = [r for r in reqs.get("successful") or [] if r.get("time_to_first_token_ms") is not None]
    bad = len(reqs.get("errored") or []) + len(reqs.get("incomplete") or [])
    return {"records": len(ok) + bad, "errors": bad, "cpu_s": round(cpu, 2),
            **errors([r["time_to_first_token_ms"] for r in ok],
                     [r["inter_token_latency_ms"] for r in ok if r.get("inter_token_latency_ms") is not None], [], args)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[50, 200, 500])
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=200.0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--hold-s", type=float, default=8.0)
    ls.add_trace_and_server_options(ap)
    args = ap.parse_args()
    ls.check_server_sched(args)
    info = c.machine_info()
    c.print_machine(info)
    aiperf = venv("aiperf", AIPERF)
    guidellm = venv("guidellm", GUIDELLM)
    results = []
    with c.scratch_dir("llm-peers-") as work:
        for conc in args.concurrency:
            stream_s = (args.ttft_ms + (args.tokens - 1) * args.itl_ms) / 1000.0
            rate = conc / stream_s
            n = int(rate * (stream_s + args.hold_s))
            d = work / f"c{conc}"
            d.mkdir()
            trace = ls.write_trace(d / "trace.jsonl", n, rate, args.tokens, args.arrivals)
            tools: list[tuple[str, Callable[[str, Path], dict[str, Any]]]] = [
                ("harness", lambda url, w, t=trace, k=conc: run_harness(t, url, w, args, k))]
            if aiperf is not None:
                tools.append(("aiperf", lambda url, w, t=trace: run_aiperf(aiperf, t, url, w, args)))
            if guidellm is not None:
                tools.append(("guidellm", lambda url, w, t=trace: run_guidellm(guidellm, aiperf, t, url, w, args)))
            for name, fn in tools:
                w = d / name
                w.mkdir()
                load = c.load_now()
                with ls.stream_servers(args.ttft_ms, args.itl_ms, w, fifo=args.server_sched == "fifo",
                                       stamps=args.server_stamps) as (urls, stats):
                    t0 = time.perf_counter()
                    res = fn(urls[0], w)
                    wall = time.perf_counter() - t0
                server = json.loads(stats[0].read_text()) if stats[0].exists() else {}
                truth = Path(f"{stats[0]}.truth.jsonl")
                served = [json.loads(line)["ttft_ms"] - args.ttft_ms for line in truth.read_text().splitlines()
                          ] if truth.exists() else []
                res.update({"tool": name, "concurrency_pairs_asked": conc, "requests": n, "wall_s": round(wall, 1),
                            "load_before": load, "server_max_open": server.get("max_open_streams"),
                            "server_late_p99_ms": server.get("late_p99_ms"),
                            "server_ttft_late_p50_ms": q(served, 0.5), "server_ttft_late_p99_ms": q(served, 0.99),
                            "cpu_ms_per_stream": round(1000 * res.get("cpu_s", 0) / n, 2) if n else None})
                results.append(res)
                print(json.dumps(res), flush=True)
    c.save_result("llm_peers", {"machine": info, "args": vars(args), "runs": results})


if __name__ == "__main__":
    main()
