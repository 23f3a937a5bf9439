"""The outbox on a real Mosquitto and real SQLite files: order, acks, retries, caps, recovery."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guetteur.config import MqttConfig, OutboxConfig
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol
from guetteur.uplink.link import Link
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.publish import ClipFile, OutboundItem, Priority
from tests.contract import kind_for_topic, validate, validate_payload
from tests.fixtures.broker import MosquittoBroker
from tests.recorder import Recorded, Recorder

ROOT = protocol.DEFAULT_ROOT
GW = "gw-test"


def event(n: int, camera: str = "cam1") -> OutboundItem:
    now = iso_ms()
    body = {
        "id": f"ev{n}:0",
        "event_id": f"ev{n}",
        "seq": 0,
        "type": "start",
        "gateway": GW,
        "camera": camera,
        "start": now,
        "end": None,
        "time": now,
        "boxes": [[0, 0, 0.5, 0.5]],
        "labels": [],
        "score": 0.1,
        "clock_synced": True,
    }
    return OutboundItem(
        f"ev{n}:0",
        "event",
        protocol.rel_event(camera),
        protocol.dumps(body),
        Priority.EVENT,
        camera,
    )


def snapshot(n: int, size: int = 1000, camera: str = "cam1") -> OutboundItem:
    return OutboundItem(
        f"ev{n}:0:snap",
        "snapshot",
        protocol.rel_snapshot(camera),
        b"\xff\xd8" + bytes(size),
        Priority.SNAPSHOT,
        camera,
        "image/jpeg",
        {"event_id": f"ev{n}"},
    )


def audit(n: int) -> OutboundItem:
    body = {"id": f"audit-{n}", "time": iso_ms(), "gateway": GW, "action": "ptz.move"}
    return OutboundItem(
        f"audit-{n}", "audit", protocol.REL_AUDIT, protocol.dumps(body), Priority.AUDIT
    )


def make_clip(tmp: Path, clip_id: str, size: int) -> tuple[ClipFile, bytes]:
    body = hashlib.sha256(clip_id.encode()).digest() * (size // 32 + 1)
    body = body[:size]
    path = tmp / f"{clip_id}.mp4"
    path.write_bytes(body)
    return ClipFile(clip_id, str(path), "cam1", event_id="ev1"), body


class Agent:
    """An Outbox on a Link, as the gateway builds them."""

    def __init__(self, broker: MosquittoBroker, data: Path, **outbox: object) -> None:
        cfg = dict(retry_s=30.0) | outbox
        self.link = Link(MqttConfig(url=broker.url, reconnect_max_s=1.0), GW)
        self.outbox = Outbox(OutboxConfig(**cfg), data, self.link, GW)
        # like the gateway: a retained "online" status on every connection
        self.link.add_connect_listener(
            lambda: self.link.publish_json(
                self.link.topics.status, {"state": "online", "gateway": GW}, retain=True
            )
        )

    def start(self) -> Agent:
        self.link.start()
        assert self.link.wait_connected(10)
        self.outbox.start()
        return self

    def close(self) -> None:
        self.outbox.close()
        self.link.stop()


@pytest.fixture
def centre(broker: MosquittoBroker) -> Iterator[Recorder]:
    rec = Recorder(broker.url, f"{ROOT}/{GW}/#").start()
    yield rec
    rec.stop()


def items(msgs: list[Recorded]) -> list[str]:
    return [m.item_id for m in msgs if m.item_id]


def test_drains_by_priority_then_submission_order(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path)  # link not started: everything waits in the outbox
    clip, _ = make_clip(tmp_path, "clipA", 5000)
    agent.outbox.submit_clip(clip)
    agent.outbox.submit(snapshot(1))
    agent.outbox.submit(event(1))
    agent.outbox.submit(audit(1))
    agent.outbox.submit(event(2, "cam2"))
    agent.outbox.submit(event(3))
    assert agent.outbox.depth()["items"] == 7  # 3 events, audit, snapshot, manifest, 1 chunk
    agent.start()
    try:
        assert centre.wait(lambda m: len(items(m)) >= 7)
        assert items(centre.snapshot()) == [
            "ev1:0",
            "ev2:0",
            "ev3:0",
            "audit-1",
            "ev1:0:snap",
            "clip:clipA:manifest",
            "clip:clipA:0",
        ]
        for m in centre.snapshot():
            if m.topic.endswith("/status"):
                validate_payload("gateway-status", m.payload)
                continue
            validate("outbox-properties", m.props)
            kind = kind_for_topic(ROOT, m.topic)
            if kind:
                validate_payload(kind, m.payload)
        events = [m for m in centre.snapshot() if m.topic.endswith("/event")]
        assert [m.props[protocol.PROP_CSEQ] for m in events] == ["1", "1", "2"]  # per camera
        assert {m.props[protocol.PROP_EPOCH] for m in events} == {agent.outbox.epoch}
    finally:
        agent.close()


def test_items_leave_only_when_acknowledged_and_survive_a_restart(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path).start()
    for n in range(5):
        agent.outbox.submit(event(n))
    assert centre.wait(lambda m: len(items(m)) >= 5)
    time.sleep(0.3)
    assert agent.outbox.depth()["events"] == 5  # broker PUBACKs are not enough
    centre.ack(ROOT, GW, ["ev0:0", "ev1:0"])
    assert wait_depth(agent.outbox, 3)
    agent.close()

    epoch = agent.outbox.epoch
    again = Agent(broker, tmp_path)
    assert again.outbox.depth()["events"] == 3 and again.outbox.epoch == epoch
    start = len(centre.snapshot())
    again.start()
    try:
        assert centre.wait(lambda m: len(items(m[start:])) >= 3)
        assert items(centre.snapshot()[start:]) == ["ev2:0", "ev3:0", "ev4:0"]
        centre.ack(ROOT, GW, ["ev2:0", "ev3:0", "ev4:0"])
        assert again.outbox.wait_empty(5)
    finally:
        again.close()


def wait_depth(outbox: Outbox, n: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outbox.depth()["items"] == n:
            return True
        time.sleep(0.05)
    return False


def test_bad_unknown_and_duplicate_acks_are_ignored(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path).start()
    try:
        agent.outbox.submit(event(1))
        agent.outbox.submit(event(2))
        assert centre.wait(lambda m: len(items(m)) >= 2)
        ack_topic = f"{ROOT}/{GW}/ack"
        for bad in (
            b"not json",
            b"[1,2]",
            b'{"v":1}',
            b'{"v":1,"ids":"ev1:0"}',
            b'{"v":1,"ids":[1,2]}',
            b'{"v":2,"ids":["ev1:0"]}',
            b"\xff\xfe",
            b'{"v":1,"ids":[],"resync":"yes"}',
        ):
            centre.publish_raw(ack_topic, bad)
        centre.ack(ROOT, GW, ["nope:0", "ev9:0"])
        time.sleep(0.5)
        assert agent.outbox.depth()["items"] == 2
        assert agent.outbox.counters["bad_acks"] == 8
        assert agent.outbox.counters["unknown_acks"] == 2
        centre.ack(ROOT, GW, ["ev1:0"])
        centre.ack(ROOT, GW, ["ev1:0", "ev1:0"])  # duplicate
        assert wait_depth(agent.outbox, 1)
        assert agent.link.connected
    finally:
        agent.close()


@pytest.mark.slow
def test_unacknowledged_items_are_sent_again_with_backoff(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path, retry_s=0.5).start()
    try:
        agent.outbox.submit(event(1))
        assert centre.wait(lambda m: items(m).count("ev1:0") >= 3, timeout=6)
        times = [m.at for m in centre.snapshot() if m.item_id == "ev1:0"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= 0.4 and gaps[1] >= 0.8  # 0.5 s, then 1 s
        centre.ack(ROOT, GW, ["ev1:0"])
        assert agent.outbox.wait_empty(3)
    finally:
        agent.close()


def test_resync_sends_everything_in_flight_again_at_once(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path, retry_s=60).start()
    try:
        for n in range(3):
            agent.outbox.submit(event(n))
        assert centre.wait(lambda m: len(items(m)) >= 3)
        centre.ack(ROOT, GW, ["ev0:0"], resync=True)  # a receiver has just connected
        assert centre.wait(lambda m: len(items(m)) >= 5, timeout=3)
        assert items(centre.snapshot())[3:] == ["ev1:0", "ev2:0"]
    finally:
        agent.close()


@pytest.mark.slow
def test_in_flight_window_bounds_unacknowledged_items(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path, inflight=4).start()
    try:
        for n in range(10):
            agent.outbox.submit(event(n))
        assert centre.wait(lambda m: len(items(m)) >= 4)
        time.sleep(0.5)
        assert items(centre.snapshot()) == [f"ev{n}:0" for n in range(4)]
        centre.ack(ROOT, GW, ["ev0:0", "ev1:0"])
        assert centre.wait(lambda m: len(items(m)) >= 6)
        time.sleep(0.3)
        assert len(items(centre.snapshot())) == 6
    finally:
        agent.close()


def test_clip_upload_manifest_chunks_and_resend(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path, chunk_bytes=4096).start()
    clip, body = make_clip(tmp_path, "clipB", 10_000)
    try:
        agent.outbox.submit_clip(clip)
        assert not Path(clip.path).exists()  # the outbox owns the file now
        assert centre.wait(lambda m: len(items(m)) >= 4)
        msgs = [m for m in centre.snapshot() if m.item_id]
        manifest = protocol.parse_clip_manifest(msgs[0].payload)
        validate_payload("clip-manifest", msgs[0].payload)
        for m in msgs[1:]:
            validate("clip-chunk-properties", m.props)
        assert msgs[0].topic == f"{ROOT}/{GW}/clip/clipB/manifest"
        assert manifest["size"] == 10_000 and manifest["count"] == 3
        assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
        chunks = {m.topic.rsplit("/", 1)[1]: m for m in msgs[1:]}
        assert b"".join(chunks[str(n)].payload for n in range(3)) == body
        assert chunks["0"].content_type == "video/mp4"
        # the centre has chunks 0 and 2, lost chunk 1 after acknowledging it: it asks again
        centre.ack(ROOT, GW, ["clip:clipB:0", "clip:clipB:1", "clip:clipB:2"])
        assert wait_depth(agent.outbox, 1)  # only the manifest waits for the whole clip
        start = len(centre.snapshot())
        centre.ack(ROOT, GW, [], resend=["clip:clipB:1", "clip:clipB:7", "clip:other:1"])
        assert centre.wait(lambda m: len(items(m[start:])) >= 1)
        time.sleep(0.3)
        again = [m for m in centre.snapshot()[start:] if m.item_id]
        assert [m.topic for m in again] == [f"{ROOT}/{GW}/clip/clipB/1"]
        assert again[0].payload == body[4096:8192]
        centre.ack(ROOT, GW, ["clip:clipB:1", "clip:clipB:manifest"])
        assert agent.outbox.wait_empty(5)
        assert not list((tmp_path / "outbox" / "clips").iterdir())  # file deleted when done
    finally:
        agent.close()


def test_size_cap_drops_oldest_clips_then_snapshots_never_events(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cap = 1 << 20
    agent = Agent(broker, tmp_path, max_bytes=cap)  # offline: everything accumulates
    old, _ = make_clip(tmp_path, "old", 400_000)
    new, _ = make_clip(tmp_path, "new", 400_000)
    agent.outbox.submit_clip(old)
    agent.outbox.submit_clip(new)
    assert agent.outbox.depth()["clips"] == 2
    for n in range(3):
        agent.outbox.submit(snapshot(n, 50_000))
    bigger, _ = make_clip(tmp_path, "bigger", 450_000)
    agent.outbox.submit_clip(bigger)  # the oldest clip goes
    db = sqlite3.connect(tmp_path / "outbox" / "outbox.db")
    assert {r[0] for r in db.execute("SELECT clip_id FROM clips")} == {"new", "bigger"}
    assert not (tmp_path / "outbox" / "clips" / "old.mp4").exists()
    for n in range(100):  # ~300 KB of events: the oldest clip makes room
        agent.outbox.submit(
            OutboundItem(
                f"big{n}:0",
                "event",
                protocol.rel_event("cam1"),
                protocol.dumps({"pad": "x" * 3000}),
                Priority.EVENT,
                "cam1",
            )
        )
    depth = agent.outbox.depth()
    assert depth["events"] == 100
    assert depth["clips"] == 1 and depth["dropped_clips"] == 2
    assert depth["bytes"] <= cap
    assert any("dropped" in w for w in agent.outbox.warnings())
    for n in range(300):  # ~900 KB more: every clip, then every snapshot goes; events never
        agent.outbox.submit(
            OutboundItem(
                f"more{n}:0",
                "event",
                protocol.rel_event("cam1"),
                protocol.dumps({"pad": "x" * 3000}),
                Priority.EVENT,
                "cam1",
            )
        )
    depth = agent.outbox.depth()
    assert depth["events"] == 400 and depth["clips"] == 0 and depth["snapshots"] == 0
    assert depth["bytes"] > cap
    assert any("over its size cap" in w for w in agent.outbox.warnings())
    agent.outbox.submit(snapshot(99, 10_000))  # no room for a new snapshot: refused
    assert agent.outbox.depth()["snapshots"] == 0
    agent.close()


@pytest.mark.slow
def test_corrupt_database_is_moved_aside_and_a_fresh_one_used(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    box = tmp_path / "outbox"
    box.mkdir()
    (box / "outbox.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 5000)
    agent = Agent(broker, tmp_path)
    warnings = agent.outbox.warnings()
    assert len(warnings) == 1 and "moved aside" in warnings[0]
    assert len(list(box.glob("outbox.db.corrupt-*"))) == 1
    agent.start()
    try:
        agent.outbox.submit(event(1))
        assert centre.wait(lambda m: items(m) == ["ev1:0"])
    finally:
        agent.close()


@pytest.mark.slow
def test_bandwidth_cap_paces_the_drain(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    rate = 200_000
    agent = Agent(broker, tmp_path, drain_bytes_per_s=rate)
    for n in range(12):
        agent.outbox.submit(snapshot(n, 50_000))  # 600 KB: ≥ ~2.9 s at 200 KB/s after the burst
    t0 = time.monotonic()
    agent.start()
    try:
        assert centre.wait(lambda m: len(items(m)) >= 12, timeout=15)
        elapsed = centre.snapshot()[-1].at - t0
        assert elapsed >= (600_000 - rate / 4) / rate * 0.9
        assert elapsed < 10
    finally:
        agent.close()


def test_live_items_are_never_queued(
    broker: MosquittoBroker, centre: Recorder, tmp_path: Path
) -> None:
    agent = Agent(broker, tmp_path).start()
    try:
        agent.outbox.submit(
            OutboundItem(
                "frag1", "live", "cam/cam1/live/s1", b"moof", Priority.CLIP, "cam1", "video/mp4"
            )
        )
        assert centre.wait(lambda m: any(x.topic.endswith("/live/s1") for x in m))
        live = next(x for x in centre.snapshot() if x.topic.endswith("/live/s1"))
        assert live.qos == 0
        assert agent.outbox.depth()["items"] == 0
    finally:
        agent.close()
