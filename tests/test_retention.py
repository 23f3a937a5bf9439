"""Retention policy, pure: no disk, segments as values."""

from __future__ import annotations

import random

from guetteur.record.retention import DAY_S, DiskState, Limits, Pin, SegmentRef, plan_purge

NOW = 1_800_000_000.0


def ring(n: int, size: int = 100, step: float = 10.0, camera: str = "cam1") -> list[SegmentRef]:
    """n consecutive segments ending now, oldest first."""
    start = NOW - n * step
    return [SegmentRef(i, camera, start + i * step, start + (i + 1) * step, size) for i in range(n)]


def test_nothing_due_deletes_nothing() -> None:
    segs = ring(50)
    plan = plan_purge(segs, 5000, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=10_000))
    assert plan.delete == []


def test_size_cap_deletes_oldest_first_until_under_cap() -> None:
    segs = ring(50)
    plan = plan_purge(segs, 5000, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=3000))
    assert [s.segment_id for s in plan.delete] == list(range(20))
    assert set(plan.reasons.values()) == {"size"}


def test_percent_cap_and_byte_cap_smaller_wins() -> None:
    segs = ring(50)
    disk = DiskState(partition_bytes=10_000, free_bytes=9_000)
    limits = Limits(legal_max_age_s=30 * DAY_S, max_bytes=4000, max_percent=25.0)
    plan = plan_purge(segs, 5000, NOW, limits, disk=disk)
    assert len(plan.delete) == 25  # 25 % of 10 000 = 2500 < 4000
    limits = Limits(legal_max_age_s=30 * DAY_S, max_bytes=2000, max_percent=25.0)
    assert len(plan_purge(segs, 5000, NOW, limits, disk=disk).delete) == 30


def test_reserve_leaves_room_for_segments_being_written() -> None:
    segs = ring(50)
    limits = Limits(legal_max_age_s=30 * DAY_S, max_bytes=5000, reserve_bytes=300)
    assert len(plan_purge(segs, 5000, NOW, limits).delete) == 3


def test_free_space_floor() -> None:
    segs = ring(50)
    disk = DiskState(partition_bytes=1_000_000, free_bytes=700)
    limits = Limits(legal_max_age_s=30 * DAY_S, min_free_bytes=1000)
    assert len(plan_purge(segs, 5000, NOW, limits, disk=disk).delete) == 3


def test_age_limit_and_legal_limit() -> None:
    segs = ring(100, step=DAY_S)  # one segment a day for 100 days
    limits = Limits(legal_max_age_s=30 * DAY_S, max_age_s=7 * DAY_S)
    plan = plan_purge(segs, 10_000, NOW, limits)
    kept = [s for s in segs if s not in plan.delete]
    assert all(s.start >= NOW - 7 * DAY_S for s in kept)
    assert min(s.start for s in kept) < NOW - 6 * DAY_S
    assert plan.reasons[69] == "legal" and plan.reasons[70] == "age"
    assert 93 not in plan.reasons


def test_pins_hold_against_size_and_age_but_never_past_legal() -> None:
    segs = ring(100, step=DAY_S)
    pin_old = Pin("evt-old", "cam1", segs[10].start, segs[10].end)  # 90 days old
    pin_recent = Pin("evt-recent", "cam1", segs[80].start + 1, segs[81].start + 1)  # 2 segments
    limits = Limits(legal_max_age_s=30 * DAY_S, max_age_s=7 * DAY_S, max_bytes=100)
    plan = plan_purge(segs, 10_000, NOW, limits, pins=[pin_old, pin_recent])
    deleted = {s.segment_id for s in plan.delete}
    assert 10 in deleted  # legal maximum beats the pin
    assert 80 not in deleted and 81 not in deleted
    assert plan.kept_pinned == 2
    # 10 000 bytes against a 100-byte cap: all but the two pinned segments go, 100 bytes too many.
    assert plan.shortfall_bytes == 100


def test_pin_of_another_camera_does_not_protect() -> None:
    segs = ring(10)
    pin = Pin("evt", "cam2", segs[0].start, segs[5].end)
    plan = plan_purge(segs, 1000, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=500), [pin])
    assert [s.segment_id for s in plan.delete] == [0, 1, 2, 3, 4]


def test_reads_only_as_far_as_needed() -> None:
    read: list[int] = []

    def lazy():  # type: ignore[no-untyped-def]
        for s in ring(10_000):
            read.append(s.segment_id)
            yield s

    plan = plan_purge(lazy(), 1_000_000, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=999_800))
    assert len(plan.delete) == 2
    assert len(read) == 3


def test_random_rings_never_exceed_cap_unless_pinned() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 200)
        segs = [
            SegmentRef(i, rng.choice(["a", "b"]), NOW - (n - i) * 10, NOW - (n - i - 1) * 10,
                       rng.randint(1, 1000))
            for i in range(n)
        ]  # fmt: skip
        total = sum(s.size for s in segs)
        cap = rng.randint(0, total)
        plan = plan_purge(segs, total, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=cap))
        left = total - plan.freed_bytes
        assert left <= cap
        # Oldest first: what is left is a suffix of the ring.
        deleted = {s.segment_id for s in plan.delete}
        assert deleted == set(range(len(deleted)))
        # And no more than needed: keeping the last deleted one would exceed the cap.
        if plan.delete:
            assert left + plan.delete[-1].size > cap


def test_limits_larger_than_the_disk_are_capped_by_free_space() -> None:
    # A 64 MB partition, recordings allowed 1 GB and no floor: the headroom still holds.
    segs = ring(50, size=1_000_000)
    disk = DiskState(partition_bytes=64_000_000, free_bytes=2_500_000)
    limits = Limits(legal_max_age_s=30 * DAY_S, max_bytes=1 << 30, headroom_bytes=6_000_000)
    plan = plan_purge(segs, 50_000_000, NOW, limits, disk=disk)
    assert [s.segment_id for s in plan.delete] == [0, 1, 2, 3]
    assert set(plan.reasons.values()) == {"space"}
    assert plan.shortfall_bytes == 0


def test_headroom_beats_pins_but_never_takes_a_cameras_newest_segment() -> None:
    a = ring(5, size=1000, camera="a")
    pin = Pin("evt-open", "a", a[0].start, float("inf"))  # an event still open
    disk = DiskState(partition_bytes=100_000, free_bytes=0)
    limits = Limits(legal_max_age_s=30 * DAY_S, headroom_bytes=10_000)
    plan = plan_purge(a, 5000, NOW, limits, [pin], disk, keep={a[-1].segment_id})
    assert [s.segment_id for s in plan.delete] == [0, 1, 2, 3]
    assert plan.shortfall_bytes == 6000
    # Without a space shortage the same pin holds against the size cap.
    roomy = DiskState(partition_bytes=100_000, free_bytes=50_000)
    capped = Limits(legal_max_age_s=30 * DAY_S, max_bytes=1000, headroom_bytes=10_000)
    plan = plan_purge(a, 5000, NOW, capped, [pin], roomy, keep={a[-1].segment_id})
    assert plan.delete == [] and plan.kept_pinned == 5


def test_newest_segment_of_each_camera_is_kept_against_size() -> None:
    segs = sorted(ring(3, camera="a") + ring(3, camera="b"), key=lambda s: s.start)
    segs = [SegmentRef(i, s.camera, s.start, s.end, s.size) for i, s in enumerate(segs)]
    newest = {max((s for s in segs if s.camera == c), key=lambda s: s.start).segment_id
              for c in ("a", "b")}  # fmt: skip
    plan = plan_purge(segs, 600, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=0), keep=newest)
    assert {s.segment_id for s in plan.delete} == {s.segment_id for s in segs} - newest


def test_an_open_pin_protects_only_for_a_bounded_time() -> None:
    segs = ring(100, step=60.0)  # 100 minutes
    stale = Pin("evt-crashed", "cam1", segs[0].start, float("inf"))  # never closed
    limits = Limits(legal_max_age_s=30 * DAY_S, max_bytes=5000, pin_max_s=600.0)
    plan = plan_purge(segs, 10_000, NOW, limits, [stale])
    # The first 10 minutes stay pinned; size retention goes on after them.
    assert plan.kept_pinned == 10
    assert [s.segment_id for s in plan.delete] == list(range(10, 60))
    unbounded = plan_purge(segs, 10_000, NOW, Limits(legal_max_age_s=30 * DAY_S, max_bytes=5000),
                           [stale])  # fmt: skip
    assert unbounded.delete == []  # what a stale pin did before the bound
