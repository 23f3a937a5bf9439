"""A deliberate hang of the supervisor loop, to prove on a real image that systemd's watchdog
restarts a stuck agent (image-build/tools/vmtest.py). Off unless a file exists on the data
partition: ``{data_dir}/debug/hang-main-loop`` holding ``{"after_s": N}``; nothing in the image,
the provisioning or the MQTT interface creates it, so a production box never hangs on purpose.

It fires once per trigger file (its inode and modification time are remembered in
``{data_dir}/.debug-hang-done``): the restarted agent runs normally.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TRIGGER = Path("debug") / "hang-main-loop"
DONE = Path(".debug-hang-done")  # in data_dir itself: the agent may not write debug/


class DebugHang:
    """``check(elapsed_s)`` from the supervisor loop: blocks forever once the trigger is due."""

    def __init__(self, data_dir: Path) -> None:
        self.trigger, self.done = data_dir / TRIGGER, data_dir / DONE
        self.after_s: float | None = None
        try:
            st = self.trigger.stat()
        except OSError:
            return  # the normal case: no trigger, nothing to do
        stamp = f"{st.st_ino}:{st.st_mtime_ns}"
        try:
            if self.done.exists() and self.done.read_text().strip() == stamp:
                return
            after = float(json.loads(self.trigger.read_text())["after_s"])
            self.done.write_text(stamp + "\n")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("debug hang trigger %s unusable (%s): ignored", self.trigger, exc)
            return
        self.after_s = after
        log.warning(
            "DEBUG: %s present: the supervisor loop will hang %.0f s after start, "
            "for systemd's watchdog to restart the agent",
            self.trigger,
            after,
        )

    def check(self, elapsed_s: float) -> None:
        if self.after_s is not None and elapsed_s >= self.after_s:
            log.warning("DEBUG: supervisor loop hangs now (%s)", self.trigger)
            threading.Event().wait()  # never set: only the watchdog ends this
