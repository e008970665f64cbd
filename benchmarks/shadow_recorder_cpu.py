"""The shadow recorder's CPU an exchange, on the same input, against another checkout's recorder.

`harness shadow`'s recorder process (harness/shadow/recorder.py) is fed from a file: the scenario frame,
then N exchanges of the proxy benchmark's request and answer (POST 18 B, JSON answer 36 B; a baseline
and a candidate item each, every one its own objects), pickled in batches of 45 exchanges as the proxy
hands them over, then the stop. CPU = user + system of the process, less that of a one-exchange file
(the start). No server, no socket: what the recorder itself costs, away from the proxy and the client.
Runs alternate between this checkout and the one named by --against (a folder holding another commit's
`harness` package, e.g. `git archive COMMIT harness | tar -x -C DIR`), and the ratio is printed; each
checkout pickles its own files (the scenario is its own class).

    .venv/bin/python benchmarks/shadow_recorder_cpu.py [--exchanges 40000] [--runs 3] [--against DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import _common as c

BATCH = 45


def write_frames(path: Path, work: Path, n: int) -> None:
    from harness.frames import frame
    from harness.scenario import load_scenario

    scenario = work / "shadow.yaml"
    if not scenario.exists():
        c.write_scenario(scenario, work / "none.jsonl", "http://127.0.0.1:9", "http://127.0.0.1:9")
    body, answer = c.TINY_BODY.encode(), c.TINY_ANSWER.encode()
    t0 = 1_790_000_000.0
    with path.open("wb") as f:
        f.write(frame((load_scenario(scenario), "capture.jsonl.gz", "legs.jsonl")))
        batch: list[tuple[object, ...]] = []
        for i in range(n):
            rid, ts = f"s{i + 1:09d}", t0 + i * 0.0002
            request_headers = [(b"Host", b"127.0.0.1:8080"), (b"Content-Length", b"%d" % len(body)),
                               (b"Content-Type", b"application/json")]

            def answer_headers() -> list[tuple[bytes, bytes]]:
                return [(b"Server", b"nginx"), (b"Date", b"Fri, 04 Dec 2026 15:57:06 GMT"),
                        (b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(answer)),
                        (b"Connection", b"keep-alive")]

            # the items exactly as harness/shadow/proxy.py hands them over (a one-read answer each)
            batch.append(("b", rid, "/score", True, "POST", "/score", request_headers, bytes(body), ts, 200,
                          answer_headers(), bytes(answer), len(answer), ts + 0.0001, ts + 0.0005, None,
                          [(len(answer), ts + 0.0005)]))
            batch.append(("c", rid, "/score", ts, 200, answer_headers(), bytes(answer), len(answer), ts + 0.0002,
                          ts + 0.0006, None, [(len(answer), ts + 0.0006)], b""))
            if len(batch) >= 2 * BATCH:
                f.write(frame(("items", batch)))
                batch = []
        if batch:
            f.write(frame(("items", batch)))
        f.write(frame(("stop",)))


def recorder_cpu(root: Path, frames: Path, work: Path, n: int) -> float:
    """CPU seconds of one recorder process (the checkout at `root`) reading `frames` of `n` exchanges; it
    must have recorded every one (an item it cannot take is dropped, and would make it look cheap)."""
    run_dir = work / f"run-{os.urandom(4).hex()}"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with frames.open("rb") as f:
        done = subprocess.run([c.PY, "-m", "harness.shadow.recorder"], stdin=f, stdout=subprocess.PIPE, cwd=run_dir,
                              env=env, check=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = json.loads(done.stdout.splitlines()[-1])
    if counts.get("dropped") or counts["legs"]["records_written"] != 2 * n or counts["capture"]["records_written"] != n:
        sys.exit(f"{root}: the recorder did not record every exchange of {frames.name}: {counts}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    if sys.argv[1:2] == ["--write-frames"]:  # in a child, with the checkout's harness on PYTHONPATH
        path = Path(sys.argv[2])
        write_frames(path, path.parent, int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--exchanges", type=int, default=40_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, help="a folder holding another checkout's harness package")
    args = ap.parse_args()
    c.print_machine(c.machine_info())
    roots = {"this": c.ROOT}
    if args.against is not None:
        if not (args.against / "harness" / "shadow" / "recorder.py").exists():
            sys.exit(f"{args.against}: no harness/shadow/recorder.py there")
        roots["against"] = args.against.resolve()
    results: dict[str, list[float]] = {name: [] for name in roots}
    with c.scratch_dir("bench-recorder-") as work:
        for name, root in roots.items():
            for n in (1, args.exchanges):
                subprocess.run([c.PY, __file__, "--write-frames", str(work / f"{name}-{n}.frames"), str(n)],
                               env={**os.environ, "PYTHONPATH": str(root)}, check=True)
        for run in range(args.runs):
            for name, root in roots.items():
                many, one = work / f"{name}-{args.exchanges}.frames", work / f"{name}-1.frames"
                us = (recorder_cpu(root, many, work, args.exchanges) - recorder_cpu(root, one, work, 1)) \
                    / (args.exchanges - 1) * 1e6
                results[name].append(us)
                print(f"run {run + 1}, {name} ({root}): {us:.1f} us of CPU an exchange "
                      f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    for name, values in results.items():
        print(f"{name}: {', '.join(f'{v:.1f}' for v in values)} us an exchange (worst {max(values):.1f})")
    if "against" in results:
        ratios = [a / b for a, b in zip(results["this"], results["against"])]
        print(f"this / against: {', '.join(f'{r:.3f}' for r in ratios)} (worst {max(ratios):.3f})")
    c.save_result("shadow_recorder_cpu", {"exchanges": args.exchanges, **results})


if __name__ == "__main__":
    main()
