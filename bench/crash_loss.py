"""Video lost per crash: the recording agent killed -9 N times at random moments, at real pace.

Each round records a 25 fps H.264 stream (GOP ``--gop``) with the production write buffer (1 MiB)
and ``--segment-s`` segments, is killed -9 after a random 2-6 s, and is restarted; the restart's
reconcile decides what is kept. Prints, per crash, the seconds of video lost (recorded before the
kill but not listed by the index after the restart) against the limits measured in the same
setting: one GOP (what flushing at every keyframe may lose) and one segment (what was lost before,
when the open segment was 0 bytes on disk at the kill).

Usage: .venv/bin/python bench/crash_loss.py [--kills 30] [--gop 1.0] [--segment-s 10]
       [--sync-interval 1.0] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.recording_agent import crash_rounds, make_h264


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--gop", type=float, default=1.0, help="seconds between keyframes")
    ap.add_argument("--segment-s", type=float, default=10.0)
    ap.add_argument("--sync-interval", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        media = make_h264(Path(tmp) / "cam.mp4", seconds=12, size="640x360", gop_s=args.gop)
        rounds = list(
            crash_rounds(
                Path(tmp) / "data",
                media,
                kills=args.kills,
                run_s=(2.0, 6.0),
                seed=args.seed,
                segment_s=args.segment_s,
                extra=["--sync-interval", str(args.sync_interval)],
            )
        )
    lost = [r.lost_s for r in rounds]
    recorded = sum(r.killed - r.wall0 for r in rounds)
    kept = sum(r.kept_s for r in rounds)
    print(f"{len(rounds)} kills -9, GOP {args.gop:g} s, segments {args.segment_s:g} s, "
          f"sync every {args.sync_interval:g} s")  # fmt: skip
    print(f"video lost per crash, s: mean {statistics.mean(lost):.3f}, "
          f"median {statistics.median(lost):.3f}, max {max(lost):.3f}")  # fmt: skip
    print(f"max / GOP (limit of a flush per keyframe): {max(lost) / args.gop:.2f}")
    print(f"mean / segment (what a crash cost before, up to a whole segment): "
          f"{statistics.mean(lost) / args.segment_s:.3f}")  # fmt: skip
    print(f"kept {kept:.1f} s of {recorded:.1f} s recorded between start and kill "
          f"({kept / recorded:.1%})")  # fmt: skip
    return 0 if max(lost) <= args.gop + 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
