"""Retention of the recording ring: which segments to delete, decided without touching the disk.

The policy is a pure function of the segments (oldest first), the limits, the pins held by event
clips not yet delivered, and the partition's size and free space. The recorder feeds it from the
index and executes the plan in its own thread, so deciding and deleting never block recording.

Order of the rules, whichever bites first:

1. the legal maximum age (Code de la sécurité intérieure, article L252-5: 30 days at most) deletes
   every segment that starts before ``now - legal_max_age`` — pinned or not;
2. the configured maximum age deletes older segments, except those pinned by an undelivered clip;
3. the size cap (bytes, or a percentage of the partition, the smaller) and the free-space floor
   delete the oldest unpinned segments until both hold again;
4. the headroom — the free space the gateway needs to keep writing (the segments being written,
   its databases) — holds whatever the configured sizes say, even against pins: without it
   nothing records, not even the rest of the pinned event, and undelivered events cannot be
   queued. Only the legal and age rules ever delete a camera's newest segment (``keep``).

A pin protects at most ``Limits.pin_max_s`` after its start: an event left open by a crash (a pin
with no end) cannot switch size retention off for its camera.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
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

    def covers(self, seg: SegmentRef, max_span_s: float | None = None) -> bool:
        t1 = self.t1 if max_span_s is None else min(self.t1, self.t0 + max_span_s)
        return seg.camera == self.camera and seg.start < t1 and seg.end > self.t0


@dataclass(frozen=True)
class Limits:
    """The limits in force. ``None`` means no limit of that kind."""

    legal_max_age_s: float
    max_age_s: float | None = None
    max_bytes: int | None = None
    max_percent: float | None = None
    min_free_bytes: int = 0
    reserve_bytes: int = 0  # room kept for the segments being written right now
    headroom_bytes: int = 0  # free space kept whatever the other limits and the pins say
    pin_max_s: float | None = None  # a pin protects at most this long after its start

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
    reasons: dict[int, str] = field(default_factory=dict)  # id → legal | age | size | space
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
    keep: Collection[int] = (),
) -> PurgePlan:
    """Decide which segments to delete. ``oldest_first`` is read lazily and only as far as needed,
    so a month of segments costs nothing when nothing is due. ``keep``: ids of segments the size
    and space rules never delete (each camera's newest: the ring always holds the latest video)."""
    plan = PurgePlan()
    legal_cutoff = now - limits.legal_max_age_s
    age_cutoff = now - limits.max_age_s if limits.max_age_s is not None else None
    cap = limits.size_cap(disk.partition_bytes if disk else None)
    over_cap = total_bytes - cap if cap is not None else 0
    under_floor = limits.min_free_bytes - disk.free_bytes if disk is not None else 0
    # Deleting a segment frees its size on the partition and removes it from the total alike.
    to_free = max(over_cap, under_floor, 0)
    # What the headroom needs is owed even by pinned segments.
    space_owed = max(limits.headroom_bytes - disk.free_bytes, 0) if disk is not None else 0
    to_free = max(to_free, space_owed)

    for seg in oldest_first:
        legal_due = seg.start < legal_cutoff
        age_due = age_cutoff is not None and seg.start < age_cutoff
        if not legal_due and not age_due and to_free <= 0:
            break  # sorted oldest first: nothing younger is due either
        if legal_due:
            reason = "legal"
        elif any(p.covers(seg, limits.pin_max_s) for p in pins):
            if space_owed <= 0 or seg.segment_id in keep:
                plan.kept_pinned += 1
                continue
            reason = "space"
        elif age_due:
            reason = "age"
        elif seg.segment_id in keep:
            continue
        else:
            reason = "size" if to_free > space_owed else "space"
        plan.delete.append(seg)
        plan.reasons[seg.segment_id] = reason
        to_free -= seg.size
        space_owed -= seg.size
    plan.shortfall_bytes = max(to_free, 0)
    return plan
