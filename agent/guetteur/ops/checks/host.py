"""Doctor's checks of the box itself: clock synchronised, data dir free space and sequential
write speed, permissions (data dir, config, device key, serial and video devices), hardware
watchdog."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from guetteur.config import GuetteurConfig
from guetteur.ops.checks.report import Check
from guetteur.timeutil import clock_synchronised, iso_ms

MIN_WRITE_MB_S = 2.0  # below this even one 4 Mbit/s camera with retention churn falls behind
CAMERA_MB_S = 0.5  # a typical 1080p H.264 main stream (4 Mbit/s)


def check_clock(synchronised: Callable[[], bool] = clock_synchronised) -> Check:
    if synchronised():
        return Check("clock", "system", "PASS", f"synchronised (now {iso_ms()})")
    return Check(
        "clock",
        "system",
        "WARN",
        f"NOT synchronised (now {iso_ms()}): event times are flagged untrusted",
        "check NTP: `timedatectl timesync-status`; the gateway "
        "needs to reach an NTP server (the Pi has no battery clock)",
    )


def check_disk(
    data_dir: Path, cameras: int, min_free_bytes: int, write_mb: int = 32
) -> list[Check]:
    out: list[Check] = []
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(data_dir)
    except OSError as exc:
        return [
            Check(
                "disk",
                str(data_dir),
                "FAIL",
                f"data dir unusable: {exc.strerror}",
                "check the data partition is mounted (see image-build/README.md)",
            )
        ]
    free_gb = usage.free / 1e9
    text = f"{free_gb:.1f} GB free of {usage.total / 1e9:.1f} GB"
    if usage.free < min_free_bytes:
        out.append(
            Check(
                "disk",
                str(data_dir),
                "FAIL",
                text,
                "free space or use a larger card/SSD; recordings need room to rotate",
            )
        )
    else:
        out.append(Check("disk", str(data_dir), "PASS", text))
    speed = write_speed_mb_s(data_dir, write_mb)
    if speed is None:
        out.append(
            Check(
                "disk-write",
                str(data_dir),
                "FAIL",
                "cannot write a test file",
                "check permissions of the data dir (guetteur user) and the partition",
            )
        )
        return out
    need = max(MIN_WRITE_MB_S, 3 * CAMERA_MB_S * cameras)
    text = f"sequential write {speed:.1f} MB/s ({write_mb} MiB with fsync); {cameras} camera(s) need ≥ {need:.1f} MB/s"
    if speed < MIN_WRITE_MB_S:
        out.append(
            Check(
                "disk-write",
                str(data_dir),
                "FAIL",
                text,
                "the card is too slow or worn out: replace it (A2/V30 card or SSD)",
            )
        )
    elif speed < need:
        out.append(
            Check("disk-write", str(data_dir), "WARN", text, "fewer cameras or a faster card/SSD")
        )
    else:
        out.append(Check("disk-write", str(data_dir), "PASS", text))
    return out


def write_speed_mb_s(directory: Path, mb: int) -> float | None:
    """Write ``mb`` MiB in 1 MiB blocks (the recorder's pattern), fsync, measure, delete."""
    path = directory / f".doctor-write-{os.getpid()}"
    block = os.urandom(1 << 20)  # random: compressing or deduplicating storage cannot cheat
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(mb):
                os.write(fd, block)
            os.fsync(fd)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    except OSError:
        return None
    return mb / elapsed if elapsed > 0 else None


def check_permissions(config: GuetteurConfig, config_path: Path) -> list[Check]:
    out: list[Check] = []
    data = Path(config.data_dir)
    if data.exists() and not os.access(data, os.W_OK | os.X_OK):
        out.append(
            Check(
                "permissions",
                str(data),
                "FAIL",
                "data dir not writable by this user",
                f"chown -R guetteur: {data}",
            )
        )
    try:
        mode = stat.S_IMODE(config_path.stat().st_mode)
        if mode & 0o007:
            out.append(
                Check(
                    "permissions",
                    str(config_path),
                    "WARN",
                    f"config is world-readable (mode {mode:04o}) and may hold passwords",
                    f"chmod 0640 {config_path}",
                )
            )
    except OSError:
        pass
    tls = config.mqtt.tls
    if tls and tls.key_file:
        try:
            mode = stat.S_IMODE(Path(tls.key_file).stat().st_mode)
            if mode & 0o077:
                out.append(
                    Check(
                        "permissions",
                        tls.key_file,
                        "FAIL",
                        f"device key readable by others (mode {mode:04o})",
                        f"chmod 0600 {tls.key_file}",
                    )
                )
            elif not os.access(tls.key_file, os.R_OK):
                out.append(
                    Check(
                        "permissions",
                        tls.key_file,
                        "FAIL",
                        "device key not readable",
                        f"chown guetteur {tls.key_file}",
                    )
                )
        except OSError as exc:
            out.append(
                Check(
                    "permissions",
                    tls.key_file,
                    "FAIL",
                    f"device key: {exc.strerror}",
                    "re-provision the gateway",
                )
            )
    for cam in config.cameras:
        devices = []
        if cam.url.startswith("v4l2:"):
            devices.append(cam.url.removeprefix("v4l2:"))
        if cam.ptz and cam.ptz.serial_port:
            devices.append(cam.ptz.serial_port)
        for dev in devices:
            if not os.path.exists(dev):
                out.append(
                    Check(
                        "permissions",
                        dev,
                        "FAIL",
                        f"camera {cam.id}: {dev} is missing",
                        "plug the adapter in; `ls /dev/ptz/` lists the stable names",
                    )
                )
            elif not os.access(dev, os.R_OK | os.W_OK):
                out.append(
                    Check(
                        "permissions",
                        dev,
                        "FAIL",
                        f"camera {cam.id}: {dev} not accessible",
                        "the guetteur user must be in the dialout/video group",
                    )
                )
    if not out:
        out.append(Check("permissions", "files", "PASS", "data dir, config, key and devices OK"))
    return out


def check_watchdog(device: str | None) -> Check:
    if not device:
        return Check(
            "watchdog",
            "hardware",
            "WARN",
            "this board profile has no watchdog",
            "a hung kernel will need a power cycle",
        )
    if Path(device).exists():
        return Check("watchdog", device, "PASS", "present (systemd pets it: RuntimeWatchdogSec)")
    return Check(
        "watchdog",
        device,
        "WARN",
        "not present",
        "enable the watchdog driver (dtparam=watchdog=on on a Pi; iTCO_wdt on x86)",
    )
