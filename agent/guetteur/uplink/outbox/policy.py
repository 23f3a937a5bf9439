"""The outbox's decisions, without I/O: what goes next within the in-flight window and its byte
cap, when an unacknowledged item is due again (exponential backoff), what the size cap evicts
first, how fast a backlog may drain, and what the technician is warned about.

Every clock is injectable (``clock=time.monotonic`` by default), so these rules are tested
without a broker, a database or sleeping. The drain order itself — priority, then submission
order — is the order in which ``OutboxStore.head`` lists the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

Clock = Callable[[], float]

MAX_INFLIGHT_BYTES = 8 << 20  # paho keeps unacknowledged payloads in memory: bound them
BACKOFF_MAX_FACTOR = 8  # the retry interval grows up to retry_s * 8
NEAR_FULL = 0.9
IDLE_WAIT_S = 1.0  # nothing in flight: look again this often (submits and acks wake sooner)
MAX_WAIT_S = 1.0  # never sleep longer than this while items are in flight
MIN_WAIT_S = 0.01


def retry_interval(retry_s: float, attempts: int) -> float:
    """How long the ``attempts``-th send of an item waits for its ack: ``retry_s``, then twice,
    four times... up to ``BACKOFF_MAX_FACTOR`` times as long."""
    return float(retry_s * min(2 ** max(attempts - 1, 0), BACKOFF_MAX_FACTOR))


@dataclass
class Flight:
    deadline: float  # on the window's clock
    size: int


class SendWindow:
    """The items sent and not yet acknowledged: at most ``max_items`` of them and ``max_bytes``
    (a single item larger than that still goes, alone), each due again at its deadline.

    The window remembers how often each item was sent, so a retry waits longer each time; an
    item that leaves the outbox is ``forget``-ed, one merely due again is ``land``-ed."""

    def __init__(
        self,
        max_items: int,
        retry_s: float,
        max_bytes: int = MAX_INFLIGHT_BYTES,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_items = max_items
        self.retry_s = retry_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._flights: dict[str, Flight] = {}
        self._attempts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._flights

    @property
    def free(self) -> int:
        """How many more items may be sent now."""
        return self.max_items - len(self._flights)

    def attempts(self, item_id: str) -> int:
        return self._attempts.get(item_id, 0)

    def choose(self, head: Iterable[tuple[str, int]]) -> list[str]:
        """The items to send now, from the head of the queue ``(item_id, size)`` in drain order:
        in-flight items are skipped; the choice stops when the window is full or the next item
        would exceed the byte cap (unless nothing else is in flight: a big item must go too)."""
        chosen: list[str] = []
        free = self.free
        room = self.max_bytes - self.bytes
        for item_id, size in head:
            if item_id in self._flights:
                continue
            if len(chosen) >= free or ((chosen or self._flights) and size > room):
                break
            chosen.append(item_id)
            room -= size
        return chosen

    def fly(self, item_id: str, size: int) -> int:
        """``item_id`` is being sent: it is due again after the backoff of this attempt. Returns
        the attempt number (1 for the first send)."""
        self.land(item_id)
        attempts = self._attempts.get(item_id, 0) + 1
        self._attempts[item_id] = attempts
        self._flights[item_id] = Flight(self.clock() + retry_interval(self.retry_s, attempts), size)
        self.bytes += size
        return attempts

    def land(self, item_id: str) -> bool:
        """``item_id`` is no longer in flight (due again now); False if it was not."""
        flight = self._flights.pop(item_id, None)
        if flight is None:
            return False
        self.bytes -= flight.size
        return True

    def forget(self, item_id: str) -> None:
        """``item_id`` left the outbox (acknowledged or dropped)."""
        self.land(item_id)
        self._attempts.pop(item_id, None)

    def expire(self) -> list[str]:
        """The items whose ack is overdue; they leave the window, due to be sent again."""
        now = self.clock()
        expired = [i for i, f in self._flights.items() if f.deadline <= now]
        for item_id in expired:
            self.land(item_id)
        return expired

    def land_all(self) -> int:
        """Everything in flight is due again now (resync); returns how many items were."""
        count = len(self._flights)
        self._flights.clear()
        self.bytes = 0
        return count

    def defer_all(self) -> None:
        """After a reconnection the MQTT session re-sends what was in flight: give every item a
        full retry period before the outbox sends it again itself."""
        deadline = self.clock() + self.retry_s
        for flight in self._flights.values():
            flight.deadline = max(flight.deadline, deadline)

    def next_wait(self) -> float:
        """How long the sender may sleep before the next deadline (or an idle look)."""
        if not self._flights:
            return IDLE_WAIT_S
        soonest = min(f.deadline for f in self._flights.values())
        return max(MIN_WAIT_S, min(soonest - self.clock(), MAX_WAIT_S))


class RateLimiter:
    """Token bucket in bytes per second (None: no cap); an item larger than the bucket is let
    through when it is full and then paid back, so the long-run rate holds whatever the item
    sizes."""

    def __init__(self, rate: int | None, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.burst = float(max(rate // 4, 16 * 1024)) if rate else 0.0
        self.tokens = self.burst
        self.stamp = clock()

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go; 0 means take them now."""
        if not self.rate:
            return 0.0
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(float(size), self.burst)
        if self.tokens >= need:
            self.tokens -= size
            return 0.0
        return (need - self.tokens) / self.rate


class Room(Enum):
    """The next step to fit a new item under the size cap."""

    FITS = "fits"
    EVICT_OLDEST_CLIP = "evict the oldest clip"
    EVICT_OLDEST_SNAPSHOT = "evict the oldest snapshot"
    REFUSE = "refuse the new item"
    OVER_CAP = "take it over the cap"


def room_for(
    kind: str, size: int, queued_bytes: int, cap: int, *, clips_queued: bool, snapshots_queued: bool
) -> Room:
    """What to do next so that ``size`` more bytes of ``kind`` fit under ``cap``: the oldest clips
    go first, then the oldest snapshots (but a new clip never evicts a snapshot). Events and audit
    records always get in — the cap is then exceeded, with a warning; a new clip or snapshot that
    cannot fit is refused. Called again after each eviction until it says something else."""
    if queued_bytes + size <= cap:
        return Room.FITS
    if clips_queued:
        return Room.EVICT_OLDEST_CLIP
    if kind == "clip":
        return Room.REFUSE
    if snapshots_queued:
        return Room.EVICT_OLDEST_SNAPSHOT
    if kind == "snapshot":
        return Room.REFUSE
    return Room.OVER_CAP  # events and audit records are never dropped


def capacity_warnings(
    queued_bytes: int, cap: int, dropped_clips: int, dropped_snapshots: int
) -> list[str]:
    """What the gateway status should say about the outbox's size."""
    out: list[str] = []
    if queued_bytes > cap:
        out.append(
            f"outbox over its size cap ({queued_bytes / 1e6:.1f} of {cap / 1e6:.1f} MB)"
            f": only events and audit records are left, none is dropped"
        )
    elif queued_bytes > NEAR_FULL * cap:
        out.append(
            f"outbox nearly full ({queued_bytes / 1e6:.1f} of {cap / 1e6:.1f} MB): "
            f"the oldest clips will be dropped next"
        )
    if dropped_clips or dropped_snapshots:
        out.append(
            f"outbox was full: {dropped_clips} clip(s) and "
            f"{dropped_snapshots} snapshot(s) dropped since start"
        )
    return out
