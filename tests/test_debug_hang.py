"""The deliberate supervisor-loop hang used by the image's watchdog test: off without its file,
once per trigger file, and a real block when due."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from guetteur.runtime.debug_hang import TRIGGER, DebugHang


def test_no_trigger_file_means_no_hang(tmp_path: Path) -> None:
    hang = DebugHang(tmp_path)
    assert hang.after_s is None
    hang.check(1e9)  # returns at once


def test_a_trigger_fires_once_and_blocks_the_caller(tmp_path: Path) -> None:
    (tmp_path / TRIGGER).parent.mkdir()
    (tmp_path / TRIGGER).write_text(json.dumps({"after_s": 5}))
    hang = DebugHang(tmp_path)
    assert hang.after_s == 5
    hang.check(4.9)  # not yet due
    blocked = threading.Thread(target=hang.check, args=(5.0,), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive()  # only the watchdog ends this
    # the restarted agent does not hang again on the same file...
    assert DebugHang(tmp_path).after_s is None
    # ...but a new trigger file arms it again
    (tmp_path / TRIGGER).unlink()
    (tmp_path / TRIGGER).write_text(json.dumps({"after_s": 1}))
    os.utime(tmp_path / TRIGGER, ns=(1, 1))
    assert DebugHang(tmp_path).after_s == 1


def test_an_unreadable_trigger_is_ignored(tmp_path: Path) -> None:
    (tmp_path / TRIGGER).parent.mkdir()
    (tmp_path / TRIGGER).write_text("not json")
    assert DebugHang(tmp_path).after_s is None
