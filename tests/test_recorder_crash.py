"""20 kill -9 of a recording agent at random moments, each followed by a restart.

After every kill, and again after every restart's reconciliation, every segment the index lists
must decode with PyAV (strict error detection) from its first to its last packet, starting on a
keyframe; no restart may raise.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guetteur.record.index import SegmentIndex
from tests.recording_agent import decode_strict, make_h264

ROOT = Path(__file__).resolve().parents[1]
KILLS = 20


def start_agent(data_dir: Path, media: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.recording_agent", str(data_dir), str(media),
         "--pace", "8", "--segment-s", "2", "--write-buffer", "4096"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def verify(index_dir: Path, verified: dict[str, int]) -> int:
    """Check every indexed segment (those already checked at the same size are skipped)."""
    index = SegmentIndex(index_dir)
    try:
        segs = index.all_segments()
        for seg in segs:
            path = index.path_of(seg)
            assert path.exists(), f"indexed segment {seg.path} has no file"
            assert path.stat().st_size == seg.size, f"{seg.path}: size differs from the index"
            if verified.get(seg.path) == seg.size:
                continue
            packets, frames, first_key = decode_strict(path)
            assert first_key, f"{seg.path} does not start on a keyframe"
            assert packets == frames == seg.packets, (seg, packets, frames)
            verified[seg.path] = seg.size
        return len(segs)
    finally:
        index.close()


@pytest.mark.slow
def test_kill_dash_nine_twenty_times(tmp_path_factory: pytest.TempPathFactory) -> None:
    media = make_h264(
        tmp_path_factory.mktemp("crashmedia") / "cam.mp4", seconds=6, size="320x240", gop_s=0.5
    )
    data_dir = tmp_path_factory.mktemp("crashdata")
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20")))
    verified: dict[str, int] = {}
    counts = []
    ready_kills = want_ready = 0
    ready_lines: list[str] = []
    for round_no in range(KILLS):
        agent = start_agent(data_dir, media)
        # Random moment: mostly while recording, sometimes during start-up (reconcile).
        assert agent.stdout is not None
        if rng.random() < 0.7:
            want_ready += 1
            line = agent.stdout.readline()
            assert line.startswith("READY"), f"round {round_no}: no READY but {line!r}"
            ready_lines.append(line)
            time.sleep(rng.uniform(0.0, 1.2))
        else:
            time.sleep(rng.uniform(0.05, 0.8))
        still_running = agent.poll() is None
        agent.send_signal(signal.SIGKILL)
        out, err = agent.communicate(timeout=10)
        assert still_running, f"round {round_no}: the agent died by itself:\n{err}"
        assert "Traceback" not in err, f"round {round_no}: the agent raised:\n{err}"
        if "READY" in out:
            ready_lines.append(out)
        ready_kills = len(ready_lines)
        counts.append(verify(data_dir / "rec", verified))
    # A last restart reconciles what the 20th kill left, records a bit and stops cleanly.
    last = subprocess.run(
        [sys.executable, "-m", "tests.recording_agent", str(data_dir), str(media),
         "--pace", "8", "--segment-s", "2", "--seconds", "1.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert last.returncode == 0 and "CLOSED" in last.stdout, last.stderr
    ready_lines.append(last.stdout)
    repaired = sum(
        int(w.split("=")[1])
        for text in ready_lines
        for w in text.split()
        if w.startswith("repaired=")
    )
    final = verify(data_dir / "rec", verified)
    print(
        f"{KILLS} kills ({ready_kills} while recording), {repaired} torn segments repaired, "
        f"{final} segments indexed"
    )
    assert repaired > 0, "no kill left a torn segment: the repair path was not exercised"
    assert ready_kills >= want_ready >= KILLS // 2, "most kills must hit a recording agent"
    assert counts[-1] >= 10, f"too little recorded to mean anything: {counts}"
    assert final > counts[-1]
    # Partial files were repaired or removed: nothing on disk that the index does not list.
    index = SegmentIndex(data_dir / "rec")
    listed = {index.path_of(s) for s in index.all_segments()}
    index.close()
    assert set((data_dir / "rec").rglob("*.ts")) == listed
