"""The outbox's decisions on a fake clock: window, byte cap, backoff, reconnection, resync,
rate limiter, size cap and warnings. No broker, no database, no sleeping."""

from __future__ import annotations

import pytest

from guetteur.uplink.outbox.policy import (
    BACKOFF_MAX_FACTOR,
    IDLE_WAIT_S,
    RateLimiter,
    Room,
    SendWindow,
    capacity_warnings,
    retry_interval,
    room_for,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_retry_interval_doubles_up_to_the_cap() -> None:
    assert [retry_interval(10.0, n) for n in range(1, 7)] == [10, 20, 40, 80, 80, 80]
    assert retry_interval(10.0, 0) == 10.0
    assert retry_interval(2.0, 50) == 2.0 * BACKOFF_MAX_FACTOR


def test_window_chooses_in_drain_order_skipping_items_in_flight() -> None:
    window = SendWindow(max_items=3, retry_s=10, clock=FakeClock())
    head = [("a", 10), ("b", 10), ("c", 10), ("d", 10)]
    assert window.choose(head) == ["a", "b", "c"]
    window.fly("a", 10)
    window.fly("b", 10)
    assert window.free == 1
    assert window.choose(head) == ["c"]  # a and b are in flight, one slot left
    window.fly("c", 10)
    assert window.choose(head) == []
    window.forget("a")  # acknowledged: it leaves the queue too
    assert window.choose(head[1:]) == ["d"]


def test_window_byte_cap_lets_a_big_item_go_alone() -> None:
    window = SendWindow(max_items=10, retry_s=10, max_bytes=100, clock=FakeClock())
    head = [("big", 250), ("small", 10)]
    assert window.choose(head) == ["big"]  # nothing in flight: a big item must go too
    window.fly("big", 250)
    assert window.bytes == 250
    assert window.choose(head) == []  # over the cap: nothing more until it lands
    window.forget("big")
    assert window.bytes == 0
    assert window.choose([("x", 60), ("y", 60), ("z", 30)]) == ["x"]  # y would exceed 100


def test_unacknowledged_items_expire_with_backoff() -> None:
    clock = FakeClock()
    window = SendWindow(max_items=5, retry_s=2.0, clock=clock)
    assert window.fly("a", 1) == 1
    clock.advance(1.9)
    assert window.expire() == []
    assert window.next_wait() == pytest.approx(0.1)
    clock.advance(0.1)
    assert window.expire() == ["a"] and "a" not in window
    assert window.fly("a", 1) == 2  # second attempt: waits 4 s
    clock.advance(3.9)
    assert window.expire() == []
    clock.advance(0.1)
    assert window.expire() == ["a"]
    window.forget("a")  # acknowledged: a new item of the same id would start over
    assert window.attempts("a") == 0


def test_reconnection_gives_items_in_flight_a_full_retry_period() -> None:
    clock = FakeClock()
    window = SendWindow(max_items=5, retry_s=2.0, clock=clock)
    window.fly("a", 1)
    clock.advance(1.5)
    window.defer_all()  # the MQTT session re-sends it first
    clock.advance(1.0)
    assert window.expire() == []  # would have been due at 2.0 s
    clock.advance(1.0)
    assert window.expire() == ["a"]


def test_resync_lands_everything_and_waits_are_bounded() -> None:
    clock = FakeClock()
    window = SendWindow(max_items=5, retry_s=60.0, clock=clock)
    assert window.next_wait() == IDLE_WAIT_S
    window.fly("a", 5)
    window.fly("b", 7)
    assert window.next_wait() == 1.0  # never sleeps past a second with items in flight
    assert window.land_all() == 2
    assert len(window) == 0 and window.bytes == 0
    assert window.attempts("a") == 1  # still counted: the next send is attempt 2


def test_rate_limiter_bursts_then_paces() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100_000, clock=clock)  # burst: 25 000 bytes
    assert limiter.delay(20_000) == 0.0
    wait = limiter.delay(20_000)
    assert wait == pytest.approx(0.15)  # 15 000 bytes missing at 100 000 B/s
    clock.advance(wait + 1e-6)
    assert limiter.delay(20_000) == 0.0
    # an item bigger than the bucket goes once the bucket is full, then is paid back
    clock.advance(1.0)
    assert limiter.delay(80_000) == 0.0
    assert limiter.delay(1_000) == pytest.approx((1_000 + 55_000) / 100_000)
    assert RateLimiter(None, clock=clock).delay(10**9) == 0.0


@pytest.mark.parametrize(
    ("kind", "clips", "snapshots", "step"),
    [
        ("event", True, True, Room.EVICT_OLDEST_CLIP),
        ("event", False, True, Room.EVICT_OLDEST_SNAPSHOT),
        ("event", False, False, Room.OVER_CAP),
        ("audit", False, False, Room.OVER_CAP),
        ("snapshot", True, True, Room.EVICT_OLDEST_CLIP),
        ("snapshot", False, True, Room.EVICT_OLDEST_SNAPSHOT),
        ("snapshot", False, False, Room.REFUSE),
        ("clip", True, True, Room.EVICT_OLDEST_CLIP),
        ("clip", False, True, Room.REFUSE),  # a clip never evicts a snapshot
    ],
)
def test_size_cap_evicts_clips_then_snapshots_never_events(
    kind: str, clips: bool, snapshots: bool, step: Room
) -> None:
    full = room_for(kind, 10, 95, 100, clips_queued=clips, snapshots_queued=snapshots)
    assert full is step
    fits = room_for(kind, 5, 95, 100, clips_queued=clips, snapshots_queued=snapshots)
    assert fits is Room.FITS


def test_capacity_warnings() -> None:
    mb = 1_000_000
    assert capacity_warnings(50 * mb, 100 * mb, 0, 0) == []
    (near,) = capacity_warnings(95 * mb, 100 * mb, 0, 0)
    assert "nearly full (95.0 of 100.0 MB)" in near
    over, dropped = capacity_warnings(120 * mb, 100 * mb, 2, 3)
    assert "over its size cap" in over and "none is dropped" in over
    assert dropped == "outbox was full: 2 clip(s) and 3 snapshot(s) dropped since start"
