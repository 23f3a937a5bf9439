"""The Outbox against an in-memory link (the OutboxLink seam) and real SQLite files: drain
order, in-flight window, backoff, reconnection, clip upload, and acks that never make the
network thread wait for the disk. The same behaviour on a real broker: tests/test_outbox.py."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guetteur.config import OutboxConfig
from guetteur.uplink import protocol
from guetteur.uplink.outbox import service
from guetteur.uplink.outbox.interfaces import InboundMessage
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.protocol import Topics
from tests.test_outbox import GW, ROOT, audit, event, make_clip, snapshot


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int
    props: dict[str, str]
    at: float

    @property
    def item_id(self) -> str | None:
        return self.props.get(protocol.PROP_ITEM_ID)


@dataclass
class Message:
    topic: str
    payload: bytes


@dataclass
class MemoryLink:
    """An OutboxLink that keeps what is published; the test plays the network thread."""

    connected: bool = True
    topics: Topics = field(default_factory=lambda: Topics(ROOT, GW))
    published: list[Published] = field(default_factory=list)
    subscriptions: dict[str, Callable[[InboundMessage], None]] = field(default_factory=dict)
    connect_listeners: list[Callable[[], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        user_props: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            self.published.append(
                Published(topic, payload, qos, dict(user_props or {}), time.monotonic())
            )

    def subscribe(
        self, topic: str, callback: Callable[[InboundMessage], None], qos: int = 1
    ) -> None:
        self.subscriptions[topic] = callback

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        self.connect_listeners.append(listener)

    # -- the centre and the broker, played by the test -----------------------------------------

    def ack(self, ids: list[str], resend: list[str] | None = None, resync: bool = False) -> None:
        topic = self.topics.ack
        self.subscriptions[topic](Message(topic, protocol.ack_message(ids, resend, resync)))

    def reconnect(self) -> None:
        for listener in self.connect_listeners:
            listener()

    def items(self) -> list[str]:
        with self.lock:
            return [p.item_id for p in self.published if p.item_id]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def link() -> MemoryLink:
    return MemoryLink()


@pytest.fixture
def make_outbox(link: MemoryLink, tmp_path: Path) -> Iterator[Callable[..., Outbox]]:
    made: list[Outbox] = []

    def make(**config: object) -> Outbox:
        cfg = OutboxConfig(**({"retry_s": 30.0} | config))
        outbox = Outbox(cfg, tmp_path, link, GW)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


@pytest.fixture
def disk_stall(tmp_path: Path) -> Iterator[Callable[[], Callable[[], None]]]:
    """Hold the outbox database's write lock from another connection, as a stalled SD card
    would hold a commit; returns the function that releases it."""
    held: list[sqlite3.Connection] = []

    def stall() -> Callable[[], None]:
        db = sqlite3.connect(tmp_path / "outbox" / "outbox.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.append(db)

        def release() -> None:
            if db.in_transaction:
                db.execute("ROLLBACK")

        return release

    yield stall
    for db in held:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


def test_drain_order_priority_then_submission_with_camera_sequence(
    link: MemoryLink, make_outbox: Callable[..., Outbox], tmp_path: Path
) -> None:
    link.connected = False
    outbox = make_outbox(chunk_bytes=4096)
    clip, _ = make_clip(tmp_path, "clipA", 5000)
    outbox.submit_clip(clip)
    outbox.submit(snapshot(1))
    outbox.submit(event(1))
    outbox.submit(audit(1))
    outbox.submit(event(2, "cam2"))
    outbox.submit(event(3))
    outbox.submit(event(3))  # idempotent by id
    outbox.start()
    time.sleep(0.1)
    assert link.published == []  # nothing goes while the link is down
    link.connected = True
    assert wait_until(lambda: len(link.items()) >= 8)
    assert link.items() == [
        "ev1:0",
        "ev2:0",
        "ev3:0",
        "audit-1",
        "ev1:0:snap",
        "clip:clipA:manifest",
        "clip:clipA:0",
        "clip:clipA:1",
    ]
    events = [p for p in link.published if p.topic.endswith("/event")]
    assert [p.props[protocol.PROP_CSEQ] for p in events] == ["1", "1", "2"]
    assert {p.props[protocol.PROP_EPOCH] for p in link.published} == {outbox.epoch}
    assert {p.qos for p in link.published} == {1}


def test_in_flight_window_and_acks(link: MemoryLink, make_outbox: Callable[..., Outbox]) -> None:
    outbox = make_outbox(inflight=3)
    for n in range(8):
        outbox.submit(event(n))
    outbox.start()
    assert wait_until(lambda: len(link.items()) >= 3)
    time.sleep(0.2)
    assert link.items() == ["ev0:0", "ev1:0", "ev2:0"]
    link.ack(["ev0:0", "ev1:0", "nope:0"])
    assert wait_until(lambda: len(link.items()) >= 5)
    time.sleep(0.2)
    assert link.items()[3:] == ["ev3:0", "ev4:0"]
    assert outbox.depth()["items"] == 6 and outbox.depth()["inflight"] == 3
    assert outbox.counters["acked"] == 2 and outbox.counters["unknown_acks"] == 1
    link.ack(["ev2:0", "ev3:0", "ev4:0"])
    assert wait_until(lambda: len(link.items()) >= 8)
    link.ack([f"ev{n}:0" for n in range(5, 8)])
    assert outbox.wait_empty(5)


def test_resend_with_backoff_and_a_fresh_period_after_reconnection(
    link: MemoryLink, make_outbox: Callable[..., Outbox]
) -> None:
    outbox = make_outbox(retry_s=0.3)
    outbox.submit(event(1))
    outbox.start()
    assert wait_until(lambda: link.items().count("ev1:0") >= 3, timeout=5)
    times = [p.at for p in link.published if p.item_id == "ev1:0"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.27 and gaps[1] >= 0.57  # 0.3 s, then 0.6 s
    assert outbox.counters["resent"] >= 2
    link.ack(["ev1:0"])
    assert outbox.wait_empty(3)

    outbox.submit(event(2))
    assert wait_until(lambda: "ev2:0" in link.items())
    sent = time.monotonic()
    time.sleep(0.2)
    link.reconnect()  # the session re-sends it: the outbox waits a full retry_s from now
    assert wait_until(lambda: link.items().count("ev2:0") >= 2, timeout=3)
    again = [p.at for p in link.published if p.item_id == "ev2:0"][1]
    assert again - sent >= 0.47


def test_resync_sends_everything_in_flight_again_now(
    link: MemoryLink, make_outbox: Callable[..., Outbox]
) -> None:
    outbox = make_outbox(retry_s=60)
    for n in range(3):
        outbox.submit(event(n))
    outbox.start()
    assert wait_until(lambda: len(link.items()) >= 3)
    link.ack(["ev0:0"], resync=True)
    assert wait_until(lambda: len(link.items()) >= 5, timeout=3)
    assert link.items()[3:] == ["ev1:0", "ev2:0"]


def test_clip_upload_and_resend_of_an_acknowledged_chunk(
    link: MemoryLink, make_outbox: Callable[..., Outbox], tmp_path: Path
) -> None:
    outbox = make_outbox(chunk_bytes=4096)
    clip, body = make_clip(tmp_path, "clipB", 10_000)
    outbox.submit_clip(clip)
    assert not Path(clip.path).exists()  # the outbox owns the file now
    outbox.start()
    assert wait_until(lambda: len(link.items()) >= 4)
    manifest = protocol.parse_clip_manifest(link.published[0].payload)
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest() and manifest["count"] == 3
    assert b"".join(p.payload for p in link.published[1:]) == body
    link.ack(["clip:clipB:0", "clip:clipB:1", "clip:clipB:2"])
    assert wait_until(lambda: outbox.depth()["items"] == 1)  # the manifest waits for the clip
    link.ack([], resend=["clip:clipB:1", "clip:other:1"])
    assert wait_until(lambda: len(link.items()) >= 5)
    assert link.published[4].item_id == "clip:clipB:1"
    assert link.published[4].payload == body[4096:8192]
    assert outbox.counters["resend_requests"] == 2
    link.ack(["clip:clipB:1", "clip:clipB:manifest"])
    assert outbox.wait_empty(5)
    assert not list((tmp_path / "outbox" / "clips").iterdir())


def queued_items(data: Path) -> int:
    db = sqlite3.connect(data / "outbox" / "outbox.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        db.close()


def test_acks_never_wait_for_the_disk(
    link: MemoryLink,
    make_outbox: Callable[..., Outbox],
    disk_stall: Callable[[], Callable[[], None]],
    tmp_path: Path,
) -> None:
    outbox = make_outbox()
    for n in range(3):
        outbox.submit(event(n))
    outbox.start()
    assert wait_until(lambda: len(link.items()) >= 3)
    release = disk_stall()
    try:
        t0 = time.monotonic()
        link.ack(["ev0:0"])  # on the network thread: must return at once
        link.ack(["ev1:0", "ev2:0"], resync=True)
        assert time.monotonic() - t0 < 0.5  # not the 10 s busy timeout of a commit
        time.sleep(0.3)
        # the commit waits for the disk, not the link (a reader does not wait for the writer)
        assert queued_items(tmp_path) == 3
    finally:
        release()
    assert outbox.wait_empty(5)
    assert outbox.counters["dropped_acks"] == 0


def test_acks_beyond_the_hand_over_queue_are_counted_and_recovered(
    link: MemoryLink,
    make_outbox: Callable[..., Outbox],
    disk_stall: Callable[[], Callable[[], None]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(service, "ACK_QUEUE_SIZE", 2)
    outbox = make_outbox(retry_s=0.5)
    for n in range(6):
        outbox.submit(event(n))
    outbox.start()
    assert wait_until(lambda: len(link.items()) >= 6)
    release = disk_stall()
    try:
        for n in range(6):  # the outbox thread takes what is queued, then waits for the disk
            link.ack([f"ev{n}:0"])
        dropped = outbox.counters["dropped_acks"]
        assert dropped >= 6 - 2 - 2  # at most two wait in the queue (and two were taken)
    finally:
        release()
    assert wait_until(lambda: queued_items(tmp_path) == dropped)
    # the dropped ones are sent again at their retry deadline; the centre acknowledges again
    assert wait_until(lambda: len(link.items()) >= 6 + dropped, timeout=3)
    link.ack(link.items()[6:])
    assert outbox.wait_empty(5)


def test_acks_received_before_close_are_committed(
    link: MemoryLink, make_outbox: Callable[..., Outbox], tmp_path: Path
) -> None:
    outbox = make_outbox()
    outbox.submit(event(1))
    outbox.submit(event(2))
    link.ack(["ev1:0"])  # the outbox thread never ran
    outbox.close()
    again = make_outbox()
    assert again.depth()["events"] == 1
