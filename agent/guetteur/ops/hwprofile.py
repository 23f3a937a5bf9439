"""Board profiles (hw/profiles/*.yaml): decoder choice, storage, watchdog, LED, serial ports.

The board is detected from ``/proc/device-tree/model`` (Raspberry Pi, Jetson) unless overridden
(an explicit board name, e.g. from the config or ``$GUETTEUR_BOARD``). Anything unrecognised
falls back to ``generic-x86``, with a warning naming the model string that was read.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
BOARD_FILE = Path("/etc/guetteur/board")
"""One line naming the board profile; written by provisioning when ``board:`` is set."""
FALLBACK_BOARD = "generic-x86"


def profile_dirs() -> list[Path]:
    """Where profiles are looked for, first hit wins: ``$GUETTEUR_HW_DIR``, the image's copy,
    the source checkout's ``hw/profiles``."""
    dirs: list[Path] = []
    env = os.environ.get("GUETTEUR_HW_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path("/usr/share/guetteur/hw/profiles"))
    dirs.append(Path(__file__).resolve().parents[3] / "hw" / "profiles")
    return dirs


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecoderProfile(_Model):
    h264: list[str] = Field(
        description="FFmpeg decoders to try for H.264, best first; the last is software"
    )
    hevc: list[str] = Field(description="FFmpeg decoders to try for H.265/HEVC, best first")
    threads: int = Field(2, ge=1, le=16, description="Decoder threads per camera")


class StorageProfile(_Model):
    data_dir: str = Field(description="Data directory (recordings, outbox, state)")
    partition_label: str | None = Field(None, description="File-system label of the data partition")
    min_free_bytes: int = Field(description="Below this much free space doctor fails")


class WatchdogProfile(_Model):
    device: str | None = Field(description="Hardware watchdog device node")
    driver: str | None = Field(None, description="Kernel driver expected behind it")
    max_timeout_s: float | None = Field(None, description="Longest timeout the hardware accepts")


class LedProfile(_Model):
    kind: Literal["sysfs-led", "gpio", "none"] = Field(description="How the status LED is driven")
    path: str | None = Field(None, description="sysfs LED directory or gpiochip:line")


class SerialPortProfile(_Model):
    name: str = Field(description="Name shown to technicians")
    device: str = Field(description="Device node (stable udev name; may be a glob)")
    note: str = Field("", description="Where it is on the board")


class BoardProfile(_Model):
    board: str = Field(description="Profile id (file name without .yaml)")
    name: str = Field(description="Human name of the board")
    match: list[str] = Field(
        default_factory=list, description="Substrings of the device-tree model"
    )
    arch: str = Field(description="CPU architecture (uname -m)")
    decoder: DecoderProfile = Field(description="Decoder choice per codec")
    storage: StorageProfile = Field(description="Storage")
    watchdog: WatchdogProfile = Field(description="Hardware watchdog")
    status_led: LedProfile = Field(description="Status LED")
    serial_ports: list[SerialPortProfile] = Field(
        default_factory=list, description="Serial ports for PTZ"
    )
    max_cameras: int = Field(4, ge=1, description="Cameras this board is sized for")

    def pick_decoder(self, codec: str, available: Iterable[str]) -> str:
        """The first decoder of the profile's list for ``codec`` that this FFmpeg has.

        ``available`` is e.g. ``av.codecs_available``. Falls back to the codec name itself
        (FFmpeg's software decoder)."""
        names = {"h264": self.decoder.h264, "hevc": self.decoder.hevc, "h265": self.decoder.hevc}
        candidates = names.get(codec.lower(), [codec])
        have = set(available)
        for name in candidates:
            if name in have:
                return name
        return "hevc" if codec.lower() == "h265" else codec.lower()


class ProfileError(Exception):
    """A profile that is missing or invalid; the message says which file and key."""


def read_model(path: Path = DEVICE_TREE_MODEL) -> str | None:
    """The device-tree model string (NUL-terminated in the file), or None on non-DT machines."""
    try:
        return path.read_bytes().rstrip(b"\0").decode(errors="replace").strip() or None
    except OSError:
        return None


def available_profiles(dirs: Sequence[Path] | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs if dirs is not None else profile_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def load_profile_file(path: Path) -> BoardProfile:
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return BoardProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ProfileError(f"{path}: {problems}") from None


def match_board(model: str | None, profiles: Iterable[BoardProfile]) -> str | None:
    """Pure core: the profile whose ``match`` substring occurs in the model string."""
    if not model:
        return None
    for prof in profiles:
        if any(m.lower() in model.lower() for m in prof.match):
            return prof.board
    return None


def detect_board(
    model_path: Path = DEVICE_TREE_MODEL,
    dirs: Sequence[Path] | None = None,
    override: str | None = None,
    board_file: Path = BOARD_FILE,
) -> BoardProfile:
    """The board profile for this machine.

    ``override`` names a profile explicitly; when None, ``$GUETTEUR_BOARD``, then ``board_file``
    (``/etc/guetteur/board``, written by provisioning) are used. ``auto`` or empty means detect."""
    files = available_profiles(dirs)
    if not files:
        raise ProfileError(
            "no board profiles found (looked in "
            + ", ".join(str(d) for d in (dirs or profile_dirs()))
            + ")"
        )
    choice = override if override is not None else os.environ.get("GUETTEUR_BOARD")
    if choice is None:
        try:
            choice = board_file.read_text().strip() or None
        except OSError:
            choice = None
    if choice and choice != "auto":
        if choice not in files:
            raise ProfileError(
                f"board {choice!r} has no profile; known boards: " + ", ".join(sorted(files))
            )
        return load_profile_file(files[choice])
    profiles = [load_profile_file(p) for p in files.values()]
    model = read_model(model_path)
    board = match_board(model, profiles)
    if board is None:
        if model:
            log.warning(
                "board %r is not one of the known profiles; using %s (set the board "
                "explicitly to choose another)",
                model,
                FALLBACK_BOARD,
            )
        elif platform.machine() not in ("x86_64", "AMD64"):
            log.warning("no device-tree model and not x86_64: using %s", FALLBACK_BOARD)
        board = FALLBACK_BOARD
    return load_profile_file(files[board])
