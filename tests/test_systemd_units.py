"""The systemd units and the image build steps, checked with systemd's own tools (no root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd" / "system"
HARDENED = [
    "guetteur.service",
    "guetteur-provision.service",
    "guetteur-update.service",
    "guetteur-rearm.service",
]


@pytest.fixture(autouse=True)
def _systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: run `make setup` (scripts/setup-system)")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY → every value it is given (unit files repeat keys, so configparser will not do)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify_root(tmp: Path, units: Path) -> Path:
    """Host units (sysinit.target...) + ours + the programs our Exec lines name."""
    root = tmp / "root"
    unit_dir = root / "usr/lib/systemd/system"
    host = next(p for p in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(p).is_dir())
    shutil.copytree(host, unit_dir, symlinks=True)
    for unit in units.iterdir():
        shutil.copy(unit, unit_dir / unit.name)
        for m in re.finditer(r"^Exec\w*=[-@:+!]*(/\S+)", unit.read_text(), re.M):
            exe = root / m.group(1).lstrip("/")
            exe.parent.mkdir(parents=True, exist_ok=True)
            if not exe.exists():
                # /opt/guetteur/current/bin/guetteur: the release the image ships
                exe.write_text("#!/bin/sh\n")
                exe.chmod(0o755)
    return root


def analyze_verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_verify_prints_nothing_for_every_unit(tmp_path: Path) -> None:
    root = verify_root(tmp_path, UNITS)
    units = sorted(p.name for p in UNITS.iterdir())
    assert "guetteur.service" in units and "guetteur-update.path" in units
    for unit in units:
        proc = analyze_verify(root, unit)
        assert proc.stderr == "", f"{unit}: {proc.stderr}"
        assert proc.returncode == 0, unit


def test_verify_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    """Negative control: the same check fails on 'Unknown key' (systemd-analyze only warns)."""
    bad_units = tmp_path / "units"
    bad_units.mkdir()
    text = (UNITS / "guetteur.service").read_text().replace("RestartSec=", "RestartSecs=")
    (bad_units / "guetteur.service").write_text(text)
    proc = analyze_verify(verify_root(tmp_path, bad_units), "guetteur.service")
    assert "Unknown key" in proc.stderr


@pytest.mark.parametrize("unit", HARDENED)
def test_security_exposure_at_most_2(unit: str) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout


def test_agent_unit_contract() -> None:
    s = unit_settings(UNITS / "guetteur.service")
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == [
        "/opt/guetteur/current/bin/guetteur run -c /etc/guetteur/guetteur.yaml"
    ]
    assert s["Restart"] == ["always"]
    assert int(s["StartLimitBurst"][0]) >= 1 and s["StartLimitIntervalSec"]
    assert s["WatchdogSec"] and s["WatchdogSignal"] == ["SIGABRT"]
    assert "PYTHONFAULTHANDLER=1" in s["Environment"][0]
    assert s["User"] == ["guetteur"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["ProtectSystem"] == ["strict"] and "/var/lib/guetteur" in s["ReadWritePaths"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = " ".join(s["DeviceAllow"])
    assert "char-video4linux" in allowed and "char-ttyUSB" in allowed
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["OnFailure"] == ["guetteur-rearm.timer"]


def test_sysusers_tmpfiles_journald_watchdog(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            "systemd-sysusers",
            "--dry-run",
            f"--root={tmp_path}",
            str(REPO / "systemd/sysusers.d/guetteur.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Creating user 'guetteur'" in proc.stderr + proc.stdout
    tmpfiles = (REPO / "systemd/tmpfiles.d/guetteur.conf").read_text()
    assert re.search(r"^L\s+/opt/guetteur/current\s", tmpfiles, re.M)
    assert re.search(r"^d\s+/var/lib/guetteur\s+0750\s+guetteur\s+guetteur", tmpfiles, re.M)
    journald = unit_settings(REPO / "systemd/journald.conf.d/guetteur.conf")
    assert journald["Storage"] == ["persistent"] and journald["SystemMaxUse"]
    watchdog = unit_settings(REPO / "systemd/system.conf.d/guetteur-watchdog.conf")
    assert watchdog["RuntimeWatchdogSec"] and watchdog["RebootWatchdogSec"]


@pytest.mark.slow
def test_image_build_payload_lint_stage_verify(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600")
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(REPO / "image-build"),
            f"OUT={out}",
            "payload",
            "lint",
            "stage",
            "verify",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "payload reproducible" in proc.stdout
    assert "guetteur.service exposure" in proc.stdout
    # the card image is really built and read back (genimage etc. come from setup-system)
    assert "card image SKIPPED" not in proc.stdout, proc.stdout[-2000:]
    tarballs = list(out.glob("guetteur-payload-*.tar.gz"))
    assert len(tarballs) == 1
    rootfs = out / "rootfs"
    assert (rootfs / "usr/lib/systemd/system/guetteur.service").is_file()
    assert (rootfs / "usr/lib/sysusers.d/guetteur.conf").is_file()
    assert (rootfs / "usr/lib/udev/rules.d/90-guetteur-ptz.rules").is_file()
    assert os.readlink(rootfs / "opt/guetteur/current") == "/usr/lib/guetteur/factory"
    assert os.access(rootfs / "usr/lib/guetteur/factory/bin/guetteur", os.X_OK)


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --root must chown: run as root")
def test_tmpfiles_creates_the_update_inbox_under_the_agents_directory(tmp_path: Path) -> None:
    """systemd-tmpfiles refuses to create a root-owned directory under an agent-owned one (an
    "unsafe path transition"): the image then had no update inbox at all."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nguetteur:x:996:996::/var/lib/guetteur:/usr/sbin/nologin\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\nguetteur:x:996:\nsystemd-journal:x:990:\n")
    conf = tmp_path / "usr/lib/tmpfiles.d"
    conf.mkdir(parents=True)
    shutil.copy(REPO / "systemd/tmpfiles.d/guetteur.conf", conf)
    proc = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={tmp_path}"], capture_output=True, text=True
    )
    assert "unsafe path transition" not in proc.stderr, proc.stderr
    inbox = tmp_path / "var/lib/guetteur/updates/inbox"
    assert inbox.is_dir() and inbox.stat().st_uid == 996 and inbox.stat().st_mode & 0o777 == 0o770
