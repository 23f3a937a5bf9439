"""Logging set-up: journald under systemd, stderr otherwise; faulthandler always.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) records go to journald through
systemd-python's ``JournalHandler`` with structured fields (``CAMERA=``, ``CODE_FILE=``...) so a
technician can ``journalctl -u guetteur CAMERA=cam2``. Without systemd-python (an optional extra)
it falls back to stderr, which systemd also captures, with a one-line warning.

faulthandler is enabled on stderr: when the systemd watchdog fires it sends SIGABRT
(``WatchdogSignal=SIGABRT`` in the unit) and every thread's Python stack lands in the journal.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from guetteur.timeutil import iso_ms

SYSLOG_IDENTIFIER = "guetteur"

# C0 controls (NUL included), DEL and C1 controls: a message or command can carry them, and a
# log line must stay one line a technician can read, never a forged second line or a terminal
# escape. Newlines and tabs become \n and \t too; tracebacks are formatted apart and kept.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def escape_controls(text: str) -> str:
    return text.translate(_CONTROL)


class EscapeControls(logging.Filter):
    """Escapes control characters in every record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message or record.args:
            record.msg, record.args = escaped, None
        return True


class UtcMsFormatter(logging.Formatter):
    """``2026-11-23T10:15:42.123Z WARNING guetteur.uplink.link: message`` (UTC, milliseconds)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_ms(record.created)


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def make_handler(
    env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """The handler for this environment: JournalHandler under systemd when available."""
    if under_systemd(env):
        try:
            from systemd.journal import JournalHandler

            handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
            # journald stamps the time itself; keep the logger name for grep
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            return handler
        except ImportError:
            pass
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if under_systemd(env):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(UtcMsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def setup_logging(
    level: str = "INFO", env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Configure the root logger once (replacing earlier handlers) and enable faulthandler."""
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)
    handler = make_handler(env, stream)
    handler.addFilter(EscapeControls())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if under_systemd(env) and type(handler) is logging.StreamHandler:
        logging.getLogger(__name__).warning(
            "systemd-python is not installed: logging to stderr (install guetteur[systemd] for "
            "structured journal fields)"
        )
    return handler
