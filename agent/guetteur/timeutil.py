"""UTC time on the wire and in files: ISO 8601 with milliseconds, and clock-sync status."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import UTC, datetime


def iso_ms(epoch_s: float | None = None) -> str:
    """Format epoch seconds (default: now) as UTC ISO 8601 with milliseconds, e.g.
    ``2026-11-23T10:15:42.123Z``."""
    t = time.time() if epoch_s is None else epoch_s
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC) into epoch seconds."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `status` is read. Padding covers the reserved tail.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def clock_synchronised() -> bool:
    """True when the kernel says the system clock is NTP-synchronised (adjtimex).

    A Raspberry Pi has no RTC: after a power cut without network its clock restarts from the last
    saved time, so every event says whether the time it carries can be trusted.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    if state < 0 or state == _TIME_ERROR:
        return False
    return not (tx.status & _STA_UNSYNC)
