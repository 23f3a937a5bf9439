"""Retention of the recording ring: which segments to delete, decided without touching the disk.

The policy is a pure function of the segments (oldest first), the limits, the pins held by event
clips not yet delivered, and the partition's size and free space. The recorder feeds it from the
index and executes the plan in its own thread, so deciding and deleting never block recording.

Order of the rules, whichever bites first:

1. the legal maximum age (Code de la sécurité intérieure, article L252-5: 30 days at most) deletes
   every segment that starts before ``now - legal_max_age`` — pinned or not;
2. the configured maximum age deletes older segments, except those pinned by an undelivered clip;
3. the size cap (bytes, or a percentage of the partition, the smaller) and the free-space floor
   delete the oldest unpinned segments until both hold again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """What the policy needs to know about one recorded segment."""

    segment_id: int
    camera: str
    start: float  # UTC epoch seconds of its first frame
    end: float
    size: int  # bytes on disk
    path: str = ""  # opaque to the policy: where the executor finds the file


@dataclass(frozen=True, slots=True)
class Pin:
    """A time range of one camera that an undelivered event clip still needs."""

    pin_id: str
    camera: str
    t0: float
    t1: float

    def covers(self, seg: SegmentRef) -> bool:
        return seg.camera == self.camera and seg.start < self.t1 and seg.end > self.t0


@dataclass(frozen=True)
class Limits:
    """The limits in force. ``None`` means no limit of that kind."""

    legal_max_age_s: float
    max_age_s: float | None = None
    max_bytes: int | None = None
    max_percent: float | None = None
    min_free_bytes: int = 0
    reserve_bytes: int = 0  # room kept for the segments being written right now

    def size_cap(self, partition_bytes: int | None) -> int | None:
        """The smaller of the byte cap and the percentage cap, minus the reserve."""
        caps: list[int] = []
        if self.max_bytes is not None:
            caps.append(self.max_bytes)
        if self.max_percent is not None and partition_bytes is not None:
            caps.append(int(partition_bytes * self.max_percent / 100.0))
        if not caps:
            return None
        return max(0, min(caps) - self.reserve_bytes)


@dataclass(frozen=True)
class DiskState:
    partition_bytes: int
    free_bytes: int


@dataclass
class PurgePlan:
    """Segments to delete, why, and what could not be met because of pins."""

    delete: list[SegmentRef] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # segment id → legal | age | size
    shortfall_bytes: int = 0  # bytes still over the cap/floor because pinned segments were kept
    kept_pinned: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(s.size for s in self.delete)


def plan_purge(
    oldest_first: Iterable[SegmentRef],
    total_bytes: int,
    now: float,
    limits: Limits,
    pins: Sequence[Pin] = (),
    disk: DiskState | None = None,
) -> PurgePlan:
    """Decide which segments to delete. ``oldest_first`` is read lazily and only as far as needed,
    so a month of segments costs nothing when nothing is due."""
    plan = PurgePlan()
    legal_cutoff = now - limits.legal_max_age_s
    age_cutoff = now - limits.max_age_s if limits.max_age_s is not None else None
    cap = limits.size_cap(disk.partition_bytes if disk else None)
    over_cap = total_bytes - cap if cap is not None else 0
    under_floor = limits.min_free_bytes - disk.free_bytes if disk is not None else 0
    # Deleting a segment frees its size on the partition and removes it from the total alike.
    to_free = max(over_cap, under_floor, 0)

    for seg in oldest_first:
        legal_due = seg.start < legal_cutoff
        age_due = age_cutoff is not None and seg.start < age_cutoff
        if not legal_due and not age_due and to_free <= 0:
            break  # sorted oldest first: nothing younger is due either
        if legal_due:
            reason = "legal"
        else:
            if any(p.covers(seg) for p in pins):
                plan.kept_pinned += 1
                continue
            reason = "age" if age_due else "size"
        plan.delete.append(seg)
        plan.reasons[seg.segment_id] = reason
        to_free -= seg.size
    plan.shortfall_bytes = max(to_free, 0)
    return plan
