"""The frames harness's own processes exchange over pipes (harness.frames)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from harness.frames import FrameReader, child_env, frame, read_frame

MESSAGES = [("c", i, "/a/B", bytes(range(i % 7)) * 50, (("k", "v"),)) for i in range(20)] + [("x",)]


def test_frames_survive_any_split() -> None:
    data = b"".join(frame(m) for m in MESSAGES)
    for step in (1, 3, 64, len(data)):
        reader = FrameReader()
        got = [m for i in range(0, len(data), step) for m in reader.feed(data[i:i + step])]
        assert got == MESSAGES


def test_read_frame_stops_at_the_end_and_at_a_cut_frame() -> None:
    data = b"".join(frame(m) for m in MESSAGES[:3])
    whole = io.BytesIO(data)
    assert [read_frame(whole) for _ in range(4)] == [*MESSAGES[:3], None]
    cut = io.BytesIO(data[:-1])
    assert [read_frame(cut) for _ in range(3)] == [*MESSAGES[:2], None]


def test_children_import_this_harness(tmp_path: Path) -> None:
    # a decoy package of the same name in the working folder and on PYTHONPATH must not win
    decoy = tmp_path / "harness"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('decoy imported')\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    out = subprocess.run([sys.executable, "-P", "-c", "import harness.frames as f; print(f.__file__)"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == Path(__file__).resolve().parents[1] / "harness" / "frames.py"
