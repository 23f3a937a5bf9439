"""``guetteur doctor``: is this gateway ready to work? One verdict per line, and what to do.

Checks, in order: config valid; board profile; each camera streams through its own source
(codec, resolution, fps: :mod:`guetteur.ops.checks.cameras`); broker reachable with the agent's
own client set-up (TLS and the certificates' expiry, then a real MQTT CONNECT:
:mod:`guetteur.ops.checks.broker`); clock synchronised, data dir free space and sequential write
speed, permissions (data dir, device key, serial and video devices), hardware watchdog
(:mod:`guetteur.ops.checks.host`); for cameras with privacy masks, that the camera itself
confirms them (ONVIF Media2, :mod:`guetteur.onvif.masks`: FAIL when it cannot, since live,
recordings and exports are the camera's own video); an enrolment token that was used or expired
is deleted. Cameras and broker are checked in parallel.

Exit code: 0 when no line is FAIL (WARN lines are advice), 1 when any line is FAIL, 2 when the
config cannot be read at all. ``--strict`` also fails on WARN. ``--json`` prints the same report
for machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from guetteur.config import CameraConfig, ConfigError, GuetteurConfig, load_config
from guetteur.onvif.masks import sync_masks
from guetteur.ops.checks.broker import check_broker
from guetteur.ops.checks.cameras import probe_camera
from guetteur.ops.checks.host import check_clock, check_disk, check_permissions, check_watchdog
from guetteur.ops.checks.report import Check, exit_code, format_report
from guetteur.ops.enrolment import retire_enrolment_token
from guetteur.timeutil import iso_ms


def check_config(path: Path) -> tuple[Check, GuetteurConfig | None]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return Check(
            "config",
            str(path),
            "FAIL",
            "; ".join(exc.problems),
            f"fix these keys in {path} (`guetteur config check` lists them)",
        ), None
    cams = [c for c in config.cameras if c.enabled]
    detail = f"valid: gateway {config.gateway_id}, {len(cams)} camera(s)"
    if not cams:
        return Check(
            "config", str(path), "WARN", detail, "add cameras (or run `guetteur discover --config`)"
        ), config
    return Check("config", str(path), "PASS", detail), config


def run_checks(
    config_path: Path,
    camera_timeout_s: float = 5.0,
    write_mb: int = 32,
    board: str | None = None,
    sample_s: float = 2.0,
) -> list[Check]:
    checks: list[Check] = []
    cfg_check, config = check_config(config_path)
    checks.append(cfg_check)
    if config is None:
        return checks
    from guetteur.ops.hwprofile import ProfileError, detect_board

    try:
        profile = detect_board(override=board)
        min_free, wd = profile.storage.min_free_bytes, profile.watchdog.device
        checks.append(Check("board", profile.board, "PASS", profile.name))
    except ProfileError as exc:
        min_free, wd = 2_000_000_000, "/dev/watchdog0"
        checks.append(Check("board", "?", "WARN", str(exc), "set the board explicitly"))
    cams = [c for c in config.cameras if c.enabled]
    masked = [c for c in cams if c.privacy_masks]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(cams) + 1))) as pool:
        cam_futures = [pool.submit(probe_camera, c, camera_timeout_s, sample_s) for c in cams]
        mask_futures = [pool.submit(check_privacy_masks, c, camera_timeout_s) for c in masked]
        broker_future = pool.submit(check_broker, config, camera_timeout_s)
        checks += [f.result() for f in cam_futures]
        checks += [f.result() for f in mask_futures]
        checks += broker_future.result()
    checks.append(check_clock())
    checks += check_disk(Path(config.data_dir), len(cams), min_free, write_mb)
    checks += check_permissions(config, config_path)
    checks.append(check_watchdog(wd))
    try:
        retired = retire_enrolment_token(config_path.parent)
    except OSError as exc:
        retired = None
        checks.append(
            Check(
                "enrolment token",
                str(config_path.parent),
                "WARN",
                f"used or expired, but could not be deleted: {exc.strerror}",
                "run `guetteur doctor` as root once",
            )
        )
    if retired is not None:
        checks.append(
            Check("enrolment token", str(config_path.parent), "PASS", f"deleted: {retired}")
        )
    return checks


def check_privacy_masks(camera: CameraConfig, timeout_s: float) -> Check:
    """Reads the camera's masks back (doctor never changes the camera: the agent pushes them)."""
    status = sync_masks(camera, timeout_s, push=False)
    if status.confirmed:
        return Check("privacy masks", camera.id, "PASS", status.detail)
    return Check(
        "privacy masks",
        camera.id,
        "FAIL",
        status.detail,
        "live, recordings and exports show what the camera films: set onvif_url (a camera with "
        "ONVIF Media2 masks) and start the agent, or draw the masks in the camera's own settings",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=Path("/etc/guetteur/guetteur.yaml"))
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--timeout", type=float, default=5.0, help="per camera/broker timeout (s)")
    parser.add_argument("--write-mb", type=int, default=32, help="MiB written by the disk test")
    parser.add_argument("--board", default=None, help="board profile (default: detect)")
    parser.add_argument(
        "--sample", type=float, default=2.0, help="seconds of packets read per camera for fps"
    )


def run(args: argparse.Namespace) -> int:
    # The camera sources log each failed attempt ("retrying in 0.3 s"): the report gives the same
    # sentence once, with what to do, and doctor does not retry.
    logging.getLogger("guetteur.sources").setLevel(logging.ERROR)
    checks = run_checks(args.config, args.timeout, args.write_mb, args.board, args.sample)
    code = exit_code(checks, args.strict)
    if checks[0].check == "config" and checks[0].verdict == "FAIL":
        code = 2
    if args.json:
        print(
            json.dumps(
                {"v": 1, "time": iso_ms(), "ok": code == 0, "checks": [asdict(c) for c in checks]},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(format_report(checks))
    sys.stdout.flush()
    return code
