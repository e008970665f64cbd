"""Checks GPU memory sampling (NVML, per process) against a real GPU.

Run on a machine with an NVIDIA GPU, PyTorch and nvidia-ml-py:  python3 benchmarks/gpu_memory_check.py
It starts a process that holds a known amount of GPU memory, samples it with harness.monitor exactly
as a replay does, and prints what NVML saw next to what torch allocated. Then it lets the process hit
a CUDA out-of-memory error and shows how that appears (an exception inside the server: only the
server's own counter, scraped from its metrics URL, can report it, which is why harness takes a
configured counter for GPU OOM events)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.monitor import ResourceMonitor, TargetProcess  # noqa: E402

HOLD = """
import torch, time, sys
x = torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("allocated_mb", torch.cuda.memory_allocated() / 2**20, flush=True)
time.sleep(float(sys.argv[2]))
"""


def main() -> int:
    results = {}
    for mb in (1024, 4096):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(mb), "6"], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        mon = ResourceMonitor([TargetProcess("candidate", "http://127.0.0.1:1", pid=proc.pid)])
        samples = []
        for _ in range(4):
            samples.append(mon.sample())
            time.sleep(0.5)
        proc.wait()
        gpu = [r["gpu_memory_mb"] for rows in samples for r in rows]
        results[mb] = {"torch_allocated_mib": float(line[1]), "nvml_samples_mb": gpu, "notes": mon.notes}
    print(json.dumps(results, indent=1))
    oom = subprocess.run([sys.executable, "-c", "import torch; torch.empty(2**50, dtype=torch.uint8, device='cuda')"],
                         capture_output=True, text=True)
    print("oom returncode", oom.returncode, "last line:", oom.stderr.strip().splitlines()[-1][:200])
    ok = all(r["nvml_samples_mb"] and min(r["nvml_samples_mb"]) >= mb * 1.048576 for mb, r in results.items())
    print("NVML per-process sampling", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
