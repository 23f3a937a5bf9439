"""Board detection from a device-tree model file, profile loading, and the logging set-up."""

from __future__ import annotations

import faulthandler
import io
import logging
from pathlib import Path

import pytest

from guetteur import logsetup
from guetteur.ops import hwprofile

PROFILES = Path(__file__).resolve().parents[1] / "hw" / "profiles"


def model_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "model"
    p.write_bytes(text.encode() + b"\0")  # the kernel NUL-terminates it
    return p


@pytest.mark.parametrize(
    ("model", "board"),
    [
        ("Raspberry Pi 4 Model B Rev 1.5", "rpi4"),
        ("Raspberry Pi Compute Module 4 Rev 1.1", "rpi4"),
        ("Raspberry Pi 5 Model B Rev 1.0", "rpi5"),
        ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
        ("Some Other Board v2", "generic-x86"),
    ],
)
def test_detect_from_device_tree(
    tmp_path: Path, model: str, board: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUETTEUR_BOARD", raising=False)
    prof = hwprofile.detect_board(
        model_file(tmp_path, model), dirs=[PROFILES], board_file=tmp_path / "no-board"
    )
    assert prof.board == board


def test_override_and_unknown_override(tmp_path: Path) -> None:
    pi4 = model_file(tmp_path, "Raspberry Pi 4 Model B Rev 1.5")
    assert hwprofile.detect_board(pi4, dirs=[PROFILES], override="rpi5").board == "rpi5"
    assert hwprofile.detect_board(pi4, dirs=[PROFILES], override="auto").board == "rpi4"
    with pytest.raises(hwprofile.ProfileError, match="known boards: generic-x86"):
        hwprofile.detect_board(pi4, dirs=[PROFILES], override="rpi3")


def test_no_device_tree_falls_back(tmp_path: Path) -> None:
    prof = hwprofile.detect_board(tmp_path / "absent", dirs=[PROFILES], override="")
    assert prof.board == "generic-x86"


def test_decoder_choice_per_board() -> None:
    pi4 = hwprofile.load_profile_file(PROFILES / "rpi4.yaml")
    pi5 = hwprofile.load_profile_file(PROFILES / "rpi5.yaml")
    jetson = hwprofile.load_profile_file(PROFILES / "jetson-orin-nano.yaml")
    with_m2m = {"h264", "hevc", "h264_v4l2m2m"}
    assert pi4.pick_decoder("h264", with_m2m) == "h264_v4l2m2m"
    assert pi4.pick_decoder("h264", {"h264"}) == "h264"  # FFmpeg without V4L2 M2M
    assert pi5.pick_decoder("h264", with_m2m) == "h264"  # Pi 5: software H.264
    assert jetson.pick_decoder("h265", {"hevc", "hevc_nvmpi"}) == "hevc_nvmpi"
    assert jetson.watchdog.device == "/dev/watchdog0"
    assert pi4.serial_ports[0].device == "/dev/ptz/uart0"


def test_invalid_profile_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((PROFILES / "rpi4.yaml").read_text().replace("max_cameras: 4", "max_cameras: x"))
    with pytest.raises(hwprofile.ProfileError, match="max_cameras"):
        hwprofile.load_profile_file(bad)


def test_logging_stderr_outside_systemd_and_faulthandler() -> None:
    stream = io.StringIO()
    handler = logsetup.setup_logging("INFO", env={}, stream=stream)
    try:
        assert faulthandler.is_enabled()
        logging.getLogger("guetteur.test").warning("camera cam2 stalled; reopening")
        line = stream.getvalue().strip()
        assert line.endswith("WARNING guetteur.test: camera cam2 stalled; reopening")
        assert line[23] == "Z" and line[10] == "T"  # 2026-11-23T10:15:42.123Z
    finally:
        logging.getLogger().removeHandler(handler)


def test_logging_journal_handler_under_systemd() -> None:
    from systemd import journal  # the dev extra installs systemd-python

    handler = logsetup.make_handler(env={"INVOCATION_ID": "abc", "JOURNAL_STREAM": "8:1234"})
    assert isinstance(handler, journal.JournalHandler)
