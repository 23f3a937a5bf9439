"""Retention at the centre: nothing kept past the legal maximum (30 days, as at the gateway),
except extractions under judicial hold.

``plan_purge`` is the policy (pure: the cut-off times); ``Retention.run`` executes it in small
transactions (a purge never holds the database for long) and records what it destroyed in the
register (CSI R.252-11 asks for the destructions too). Files leave the media tree only when no
row refers to their sha256 any more. The register itself is not purged by this task: it records
actions, not images, and its own keeping period is the authorisation's.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, or_, select

from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import (
    camera_status,
    clip_chunks,
    clips,
    events,
    extractions,
    gateway_audit,
    refused,
    snapshots,
)
from guetteur.centre.media import MediaStore
from guetteur.centre.register import Entry, Register
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

BATCH = 1000
DAY = 86400.0


@dataclass(frozen=True)
class PurgePlan:
    cutoff: str  # rows received before this are purged
    stale_partial: str  # clips still incomplete since before this are dropped (chunks too)


def plan_purge(now: float, max_age_days: float) -> PurgePlan:
    cutoff = now - max_age_days * DAY
    return PurgePlan(cutoff=iso_ms(cutoff), stale_partial=iso_ms(max(cutoff, now - 2 * DAY)))


class Retention:
    def __init__(
        self,
        db: Database,
        media: MediaStore,
        register: Register,
        max_age_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.media = media
        self.register = register
        self.max_age_days = max_age_days
        self.clock = clock

    def run(self) -> dict[str, int]:
        plan = plan_purge(self.clock(), self.max_age_days)
        counts = {
            "events": self._rows(events, events.c.received < plan.cutoff, events.c.n),
            "snapshots": self._media_rows(snapshots, "jpg", snapshots.c.received < plan.cutoff),
            "clips": self._media_rows(
                clips,
                "mp4",
                or_(
                    clips.c.received < plan.cutoff,
                    (clips.c.state == "receiving") & (clips.c.received < plan.stale_partial),
                ),
            ),
            "gateway_audit": self._rows(
                gateway_audit, gateway_audit.c.received < plan.cutoff, gateway_audit.c.n
            ),
            "refused": self._rows(refused, refused.c.received < plan.cutoff, refused.c.n),
            "camera_status": self._rows(camera_status, camera_status.c.updated < plan.cutoff),
        }
        counts["extractions"], kept = self._extractions(plan.cutoff)
        if any(counts.values()):
            self.register.record(
                Entry(
                    "retention.purge",
                    source="centre",
                    outcome="ok",
                    detail={
                        "before": plan.cutoff,
                        "max_age_days": self.max_age_days,
                        "purged": counts,
                        "kept_on_hold": kept,
                    },
                )
            )
            log.info("retention: purged %s (kept on judicial hold: %s)", counts, kept or "none")
        return counts

    def _rows(self, table: Table, where: Any, order: Any = None) -> int:
        """Delete matching rows, BATCH at a time."""
        key = list(table.primary_key.columns)
        total = 0
        while True:
            with self.db.write() as conn:
                stmt = select(*key).where(where).limit(BATCH)
                ids = conn.execute(stmt).all()
                if not ids:
                    return total
                for row in ids:
                    conn.execute(
                        delete(table).where(*(c == v for c, v in zip(key, row, strict=True)))
                    )
                total += len(ids)
            if len(ids) < BATCH:
                return total

    def _media_rows(self, table: Table, ext: str, where: Any) -> int:
        name = "clip_id" if table is clips else "item_id"
        total = 0
        while True:
            with self.db.write() as conn:
                rows = conn.execute(
                    select(table.c.gateway, table.c[name], table.c.sha256).where(where).limit(BATCH)
                ).all()
                if not rows:
                    return total
                for gw, item, _sha in rows:
                    conn.execute(delete(table).where(table.c.gateway == gw, table.c[name] == item))
                    if table is clips:
                        conn.execute(
                            delete(clip_chunks).where(
                                clip_chunks.c.gateway == gw, clip_chunks.c.clip_id == item
                            )
                        )
            # files only once the rows are gone for good, and only if nothing else refers to them
            for _gw, _item, sha in rows:
                if sha and not self._referenced(sha):
                    self.media.release(sha, ext)
            total += len(rows)
            if len(rows) < BATCH:
                return total

    def _referenced(self, sha: str) -> bool:
        with self.db.read() as conn:
            return any(
                conn.execute(select(t.c.sha256).where(t.c.sha256 == sha).limit(1)).first()
                for t in (snapshots, clips)
            )

    def _extractions(self, cutoff: str) -> tuple[int, int]:
        with self.db.read() as conn:
            old = (
                conn.execute(select(extractions).where(extractions.c.created < cutoff))
                .mappings()
                .all()
            )
        purged = kept = 0
        for row in old:
            if row["hold"]:
                kept += 1
                continue
            with self.db.write() as conn:
                conn.execute(delete(extractions).where(extractions.c.id == row["id"]))
                self.register.append(
                    conn,
                    Entry(
                        "export.purged",
                        gateway=row["gateway"],
                        camera=row["camera"],
                        session_id=row["id"],
                        outcome="ok",
                        detail={"requisition": row["requisition"], "created": row["created"]},
                    ),
                )
            if row["folder"]:
                shutil.rmtree(Path(row["folder"]), ignore_errors=True)
            purged += 1
        return purged, kept
