"""Command nonces that survive an agent restart: a replayed command stays refused while it is
still fresh, even if the agent restarted in between (a crash, an update, the watchdog).

Each accepted nonce is appended to a small file in the data directory (one ``write``, no fsync:
a restart of the agent keeps what the kernel holds; a power cut may lose the last lines, and the
gateway's boot takes longer than the default 30 s lifetime of a command). The file is rewritten
with only the unexpired nonces when it grows past a bound, and read back at start.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from guetteur.uplink.command_auth import NonceMemory

log = logging.getLogger(__name__)

COMPACT_AFTER = 4096  # lines appended before the file is rewritten with the live nonces


class PersistentNonces(NonceMemory):
    def __init__(self, path: Path, now: float) -> None:
        super().__init__()
        self._path = path
        self._file_lock = threading.Lock()
        self._appended = 0
        try:
            lines = path.read_text(encoding="ascii", errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            log.error("command nonces %s unreadable (%s); starting empty", path, exc)
            lines = []
        for line in lines:
            nonce, _, expiry = line.partition(" ")
            try:
                expires = float(expiry)
            except ValueError:
                continue  # a line cut by a crash
            if expires >= now and nonce:
                self._seen[nonce] = expires
        self._rewrite()

    def first_use(self, nonce: str, expires_at: float, now: float) -> bool:
        if not super().first_use(nonce, expires_at, now):
            return False
        with self._file_lock:
            try:
                with self._path.open("a", encoding="ascii") as f:
                    f.write(f"{nonce} {expires_at:.3f}\n")
                self._appended += 1
                if self._appended >= COMPACT_AFTER:
                    self._rewrite(now)
            except OSError as exc:  # a full disk must not stop commands: memory still holds it
                log.error("command nonce not persisted (%s): replay protection is in memory", exc)
        return True

    def _rewrite(self, now: float | None = None) -> None:
        with self._lock:
            live = {n: e for n, e in self._seen.items() if now is None or e >= now}
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text("".join(f"{n} {e:.3f}\n" for n, e in live.items()), encoding="ascii")
            os.replace(tmp, self._path)
            self._appended = 0
        except OSError as exc:
            log.error("command nonces %s not rewritten: %s", self._path, exc)
