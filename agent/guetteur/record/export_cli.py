"""`guetteur export --camera C --from T --to T -o FILE [-c CONFIG]`: a recorded range → MP4.

For the technician on site (or over SSH): reads the ring's index while the agent keeps recording,
applies the same checks as ``cmd/export``, remuxes without re-encoding and says what is missing.
Exit codes: 0 done (gaps printed if any), 1 nothing recorded in the range, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from guetteur.config import ConfigError, load_config
from guetteur.record.clips import (
    ClipError,
    check_export,
    cut_clip,
    recorded_gaps,
    wait_for_recording,
)
from guetteur.record.index import SegmentIndex
from guetteur.timeutil import iso_ms, parse_iso
from guetteur.uplink.commands import CommandError

DEFAULT_CONFIG = "/etc/guetteur/guetteur.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument(
        "--from", dest="start", required=True, help="start, ISO 8601 UTC (2026-11-23T10:15:00Z)"
    )
    parser.add_argument("--to", dest="end", required=True, help="end, ISO 8601 UTC")
    parser.add_argument("-o", "--output", required=True, type=Path, help="MP4 file to write")
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})"
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    try:
        t0 = parse_iso(args.start)
        t1 = parse_iso(args.end)
    except ValueError:
        print(
            "guetteur export: --from and --to must be ISO 8601 times, e.g. 2026-11-23T10:15:00Z",
            file=sys.stderr,
        )
        return 2
    out: Path = args.output
    if out.suffix.lower() != ".mp4":
        print(f"guetteur export: {out} should end in .mp4 (the clip is MP4)", file=sys.stderr)
        return 2
    if out.is_dir():
        print(f"guetteur export: {out} is a directory; give a file name", file=sys.stderr)
        return 2
    rec_dir = Path(config.data_dir) / "rec"
    if not (rec_dir / "index.sqlite3").exists():
        print(f"guetteur export: no recordings under {rec_dir}", file=sys.stderr)
        return 1
    index = SegmentIndex(rec_dir)
    try:
        now = time.time()
        known = {c.id for c in config.cameras} | set(index.cameras())
        try:
            check_export(args.camera, t0, t1, now, config.recording.export_max_s, known)
        except CommandError as exc:
            print(f"guetteur export: {exc.message} [{exc.code}]", file=sys.stderr)
            return 2
        _gaps, anything = recorded_gaps(index, args.camera, t0, t1, now)
        if not anything:
            print(
                f"guetteur export: nothing recorded for {args.camera} between {iso_ms(t0)} and "
                f"{iso_ms(t1)} [not_found]",
                file=sys.stderr,
            )
            return 1
        # The end may lie in the segment the agent is writing: wait for it to be closed.
        wait_for_recording(index, args.camera, t1, config.recording.segment_s * 2 + 10)
        try:
            result = cut_clip(index, args.camera, t0, t1, 0.0, 0.0, out)
        except ClipError as exc:
            print(f"guetteur export: {exc.message} [{exc.code}]", file=sys.stderr)
            return 1
    finally:
        index.close()
    print(
        f"{result.path}: {args.camera} {iso_ms(result.start)} .. {iso_ms(result.end)}, "
        f"{result.packets} frames"
    )
    for a, b in result.gaps:
        print(f"  missing: {iso_ms(a)} .. {iso_ms(b)} ({b - a:.1f} s)")
    return 0
