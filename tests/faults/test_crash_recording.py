"""kill -9 while recording: a crash loses at most the last GOP (issue 12).

The recording agent (``tests/recording_agent.py``) records a 25 fps H.264 stream with 0.5 s GOPs
at real pace, with the production write buffer (1 MiB) and 4 s segments; it is killed -9 at a
random moment and restarted. After each restart the index must list what was recorded up to the
last keyframe before the kill: before segments were flushed per keyframe, the open segment was
0 bytes on disk at the kill and the whole run was lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.recording_agent import crash_rounds, make_h264
from tests.test_recorder_crash import verify

GOP_S = 0.5
SYNC_S = 1.0  # recording.sync_interval_s, the default


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_h264(
        tmp_path_factory.mktemp("crashmedia") / "cam.mp4", seconds=8, size="320x240", gop_s=GOP_S
    )


def test_each_crash_loses_at_most_a_gop(media: Path, tmp_path: Path) -> None:
    rounds = list(crash_rounds(tmp_path, media, kills=3, run_s=(1.5, 2.5), seed=3))
    for r in rounds:
        # One GOP not yet flushed, plus the frame whose end the repair cannot prove whole.
        assert r.lost_s <= GOP_S + 0.1, f"lost {r.lost_s:.2f} s of {r.killed - r.wall0:.2f} s"
    verify(tmp_path / "rec", {})


@pytest.mark.slow
def test_twenty_kills_keep_ninety_percent_of_the_recording(media: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", "12"))
    rounds = list(crash_rounds(tmp_path, media, kills=20, run_s=(2.0, 5.0), seed=seed))
    recorded = sum(r.killed - r.wall0 for r in rounds)
    kept = sum(r.kept_s for r in rounds)
    worst = max(r.lost_s for r in rounds)
    print(f"20 kills: kept {kept:.1f} s of {recorded:.1f} s recorded ({kept / recorded:.1%}), "
          f"worst loss {worst:.2f} s per crash")  # fmt: skip
    assert kept >= 0.9 * recorded
    assert worst <= GOP_S + 0.1
    assert verify(tmp_path / "rec", {}) >= 20  # every indexed segment decodes, strictly
