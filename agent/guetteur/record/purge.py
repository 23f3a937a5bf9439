"""Purge execution: one retention pass over the ring, as the recorder's retention thread runs it.

``record/retention.plan_purge`` decides what goes (a pure policy); ``RingPurger.run`` gathers what
it needs (limits, disk usage, pins, the index oldest first), executes the plan (index rows first,
then files: the index never lists a deleted file) and warns when pins hold the ring over its cap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guetteur.config import RecordingConfig
from guetteur.record import reserve
from guetteur.record.index import SegmentIndex
from guetteur.record.retention import DAY_S, DiskState, Limits, PurgePlan, plan_purge
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLITE_FULL from the index."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
    return getattr(exc, "errno", None) == errno.ENOSPC


@dataclass(frozen=True)
class SpaceReport:
    """What the last pass left: free bytes against the headroom the gateway needs."""

    free_bytes: int
    headroom_bytes: int
    reserve_in_place: bool

    @property
    def short(self) -> bool:
        return self.free_bytes < self.headroom_bytes


class RingPurger:
    """Runs retention passes on the ring of ``index``. One pass at a time: the caller serialises.

    ``reserve_bytes``: room to keep for the segments being written (see ``Limits``); ``warn``:
    ``(key, sentence)`` for the gateway status. ``data_dir`` holds the reserve file
    (``record/reserve.py``), recreated after a pass that leaves room for it."""

    def __init__(
        self,
        index: SegmentIndex,
        config: RecordingConfig,
        clock: Callable[[], float],
        reserve_bytes: Callable[[], int],
        warn: Callable[[str, str], None],
        data_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.clock = clock
        self.reserve_bytes = reserve_bytes
        self.warn = warn
        self.data_dir = data_dir
        self.space: SpaceReport | None = None  # after the last pass
        # Written by the writer thread (need_free), taken by the retention thread (run).
        self._urgent_lock = threading.Lock()
        self._urgent_free = 0

    def need_free(self, nbytes: int) -> None:
        """A write found the disk full: the next pass keeps at least ``nbytes`` free."""
        with self._urgent_lock:
            self._urgent_free = max(self._urgent_free, nbytes)

    def _take_urgent(self) -> int:
        # Taken and reset at once: a need_free arriving during the pass is for the next pass.
        with self._urgent_lock:
            urgent, self._urgent_free = self._urgent_free, 0
        return urgent

    def run(self) -> PurgePlan:
        """Plan and execute one pass; returns the plan executed."""
        now = self.clock()
        limits = self._limits(self._take_urgent())
        usage = shutil.disk_usage(self.index.root)
        disk = DiskState(partition_bytes=usage.total, free_bytes=usage.free)
        self.index.drop_pins_older_than(now - limits.legal_max_age_s)
        plan = plan_purge(
            (s.ref() for s in self.index.iter_oldest_first()),
            self.index.total_bytes(),
            now,
            limits,
            self.index.pins(),
            disk,
            keep=self.index.newest_ids(),
        )
        self._execute(plan)
        self._after(plan, limits)
        if plan.shortfall_bytes > 0 and plan.kept_pinned:
            self.warn(
                "pinned",
                f"{iso_ms(now)}: recordings exceed their size limit by "
                f"{plan.shortfall_bytes / 1e6:.0f} MB because {plan.kept_pinned} segments "
                "are kept for event clips not yet delivered",
            )
        return plan

    def _limits(self, urgent_free: int) -> Limits:
        cfg = self.config
        writing = self.reserve_bytes()
        return Limits(
            legal_max_age_s=cfg.legal_max_age_days * DAY_S,
            max_age_s=cfg.max_age_days * DAY_S if cfg.max_age_days is not None else None,
            max_bytes=cfg.max_bytes,
            max_percent=cfg.max_percent,
            min_free_bytes=max(cfg.min_free_bytes, urgent_free),
            reserve_bytes=writing,
            # The reserve file, when missing, is owed too: it is what saves the next commit.
            headroom_bytes=max(urgent_free, writing + cfg.headroom_bytes + self._reserve_owed()),
            pin_max_s=cfg.pin_max_s,
        )

    def space_reasons(self) -> list[tuple[str, str]]:
        """Why the last pass leaves the recording degraded, for the status, in French and in
        English (empty: it does not)."""
        space = self.space
        if space is None:
            return []
        reasons = []
        if space.short:
            free, needed = f"{space.free_bytes / 1e6:.1f}", f"{space.headroom_bytes / 1e6:.1f}"
            reasons.append(
                (
                    f"partition de données presque pleine ({free} Mo libres, {needed} Mo requis)",
                    f"data partition short of space ({free} MB free, {needed} MB needed)",
                )
            )
        if not space.reserve_in_place and self.config.reserve_file_bytes:
            reasons.append(
                (
                    "réserve disque des bases de données utilisée",
                    "the databases' disk reserve is in use",
                )
            )
        return reasons

    def _reserve_owed(self) -> int:
        if self.data_dir is None:
            return 0
        return max(self.config.reserve_file_bytes - reserve.reserve_size(self.data_dir), 0)

    def _after(self, plan: PurgePlan, limits: Limits) -> None:
        """Recreate the reserve if there is room for it now; note what the pass left."""
        in_place = True
        if self.data_dir is not None:
            keep_free = limits.headroom_bytes - self._reserve_owed()
            in_place = reserve.ensure(self.data_dir, self.config.reserve_file_bytes, keep_free)
        try:
            free = shutil.disk_usage(self.index.root).free
        except OSError:
            free = 0
        # Short means the databases' room is not there; the room for the segments being
        # written is theirs to fill meanwhile (judged on it, the status would flap).
        headroom = self.config.headroom_bytes
        self.space = SpaceReport(free, headroom, in_place)
        if self.space.short:
            self.warn(
                "space",
                f"{iso_ms(self.clock())}: data partition of {self.index.root} short of space: "
                f"{free / 1e6:.1f} MB free, {headroom / 1e6:.1f} MB needed; only each camera's "
                "newest recording is left to purge",
            )

    def _execute(self, plan: PurgePlan) -> None:
        if not plan.delete:
            return
        # Index first: the index must never list a deleted file. A crash in between leaves
        # orphans that the next reconcile indexes again and the next pass purges.
        try:
            self.index.remove([s.segment_id for s in plan.delete])
            index_first = True
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            # The index cannot even record a deletion on a full disk: free the files first,
            # then forget them. Until then a clip may meet a missing file (a gap, not an error).
            index_first = False
        for seg in plan.delete:
            path = self.index.root / seg.path
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the day's directory, once empty
        if not index_first:
            self.index.remove([s.segment_id for s in plan.delete])
        counts: dict[str, int] = {}
        for reason in plan.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        log.info(
            "retention: %d segments purged (%.1f MB): %s",
            len(plan.delete),
            plan.freed_bytes / 1e6,
            counts,
        )
