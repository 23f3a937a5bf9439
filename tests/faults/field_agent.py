"""A real agent (``python -m guetteur run``, its own process) with generated ``test:`` cameras,
for the crash and stop scenarios of tests/faults and bench/stop_bench.py: written config, start,
SIGTERM or SIGKILL, and what its journal (``events.sqlite3``) and recording index hold."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml


def camera_url(n: int, size: tuple[int, int] = (320, 180), fps: int = 10) -> str:
    """A person crossing for 2.5 s in every 6 s loop, each camera 0.7 s after the one before,
    so that at most moments some event is in progress and some clip waits for its post-roll.
    1 s GOPs keep clips and segments short."""
    start = 0.5 + 0.7 * (n % 4)
    return (
        f"test:walk?start={start:.1f}&end={start + 2.5:.1f}&duration=6&gop=1"
        f"&width={size[0]}&height={size[1]}&fps={fps}"
    )


def write_config(
    path: Path,
    broker_url: str,
    data_dir: Path,
    *,
    cameras: int,
    gateway: str = "gw-field",
    post_roll_s: float = 5.0,
    events: dict[str, Any] | None = None,
    size: tuple[int, int] = (320, 180),
    fps: int = 10,
) -> Path:
    """The agent's YAML: ``cameras`` generated cameras, 2 s segments, the given post-roll (a long
    one keeps clip jobs waiting: a backlog)."""
    path.write_text(
        yaml.safe_dump(
            {
                "gateway_id": gateway,
                "data_dir": str(data_dir),
                "mqtt": {"url": broker_url, "reconnect_max_s": 1.0},
                "cameras": [
                    {"id": f"cam{i}", "url": camera_url(i, size, fps)} for i in range(cameras)
                ],
                "recording": {"segment_s": 2, "max_percent": None, "min_free_bytes": 0},
                "events": {
                    "pre_roll_s": 1,
                    "post_roll_s": post_roll_s,
                    "end_quiet_s": 1.0,
                    "start_frames": 2,
                    **(events or {}),
                },
                "outbox": {"retry_s": 2.0},
            }
        )
    )
    return path


class FieldAgent:
    """One ``guetteur run`` process; its output goes to ``log`` (read it when a test fails)."""

    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.log_path = log
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FieldAgent:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "guetteur",
                "--log-level",
                "INFO",
                "run",
                "-c",
                str(self.config),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM, as systemd sends it; the exit code and how long the agent took to exit."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:  # what systemd would do at TimeoutStopSec
            self.proc.kill()
            code = self.proc.wait()
        took = time.monotonic() - began
        self._close_log()
        return code, took

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut, as far as the agent can tell."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def events_in_progress(self) -> int:
        """Events started and not yet ended, as its log says (a technician's view)."""
        return self.logged(": event start ") - self.logged(": event end ")

    def logged(self, text: str) -> int:
        """Lines of its log (every run so far) that contain ``text``."""
        if not self.log_path.exists():
            return 0
        return sum(text in line for line in self.log_path.read_text(errors="replace").splitlines())

    # -- what is on its disk (read-only, while it runs or after) -------------------------------

    def journal(self) -> tuple[set[str], set[str]]:
        """(events open, events whose clip is owed) in the agent's journal."""
        db = self.data_dir / "events.sqlite3"
        if not db.exists():
            return set(), set()
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                opened = {r[0] for r in conn.execute("SELECT event_id FROM open_events")}
                owed = {r[0] for r in conn.execute("SELECT event_id FROM clip_jobs")}
        except sqlite3.OperationalError:  # the agent is creating it
            return set(), set()
        return opened, owed

    def outbox_items(self) -> int:
        """Items waiting in the agent's outbox for the centre's acknowledgement."""
        db = self.data_dir / "outbox" / "outbox.db"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0

    def pins(self) -> dict[str, float]:
        """Pins in the recording index: id → end of the pinned range (inf: open-ended)."""
        db = self.data_dir / "rec" / "index.sqlite3"
        if not db.exists():
            return {}
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                return {r[0]: float(r[1]) for r in conn.execute("SELECT id, t1 FROM pins")}
        except sqlite3.OperationalError:  # the agent is creating it
            return {}


def receiver_rows(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of the centre receiver's SQLite store (empty before it exists)."""
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        return list(conn.execute(sql, args))


def receiver_events(db: Path) -> dict[str, dict[str, int]]:
    """event_id → {message type: rows} at the receiver."""
    out: dict[str, dict[str, int]] = {}
    for event_id, kind, n in receiver_rows(
        db, "SELECT event_id, type, COUNT(*) FROM events GROUP BY event_id, type"
    ):
        out.setdefault(event_id, {})[kind] = n
    return out


def receiver_clips(db: Path) -> dict[str, int]:
    """event_id → complete clips of it at the receiver."""
    return {
        event_id: n
        for event_id, n in receiver_rows(
            db,
            "SELECT event_id, COUNT(*) FROM clips WHERE state = 'complete' GROUP BY event_id",
        )
    }
