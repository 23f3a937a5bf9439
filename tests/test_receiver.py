"""The centre receiver end to end on a real Mosquitto with the outbox (acks, shared
subscriptions), plus `guetteur centre events`. Its storage decisions, on SQLite and PostgreSQL:
tests/centre/test_store.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from guetteur.centre.db.schema import clips, events, snapshots
from guetteur.centre.receiver.mqtt import Receiver
from guetteur.centre.receiver.store import Store
from guetteur.uplink import protocol
from guetteur.uplink.link import DirectPublisher
from guetteur.uplink.publish import Publisher
from tests.contract import validate_payload
from tests.fixtures.broker import MosquittoBroker
from tests.recorder import Recorder
from tests.test_outbox import Agent, event, make_clip, snapshot

ROOT = protocol.DEFAULT_ROOT
REPO = Path(__file__).resolve().parents[1]


def test_receiver_acknowledges_end_to_end_and_the_outbox_empties(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    receiver = Receiver(broker.url, tmp_path / "centre", client_id="rx-e2e")
    receiver.start()
    acks = Recorder(broker.url, f"{ROOT}/+/ack").start()
    agent = Agent(broker, tmp_path / "agent", chunk_bytes=8192).start()
    clip, body = make_clip(tmp_path, "clipE", 30_000)
    try:
        assert receiver.wait_connected(10)
        for n in range(20):
            agent.outbox.submit(event(n))
        agent.outbox.submit(snapshot(1))
        agent.outbox.submit_clip(clip)
        assert agent.outbox.wait_empty(15), agent.outbox.depth()
        receiver.stop()
        # a receiver that (re)connects asks the gateways it knows to re-send what is pending
        receiver = Receiver(broker.url, tmp_path / "centre", client_id="rx-e2e")
        receiver.start()
        assert acks.wait(lambda m: any(x.json().get("resync") for x in m), timeout=5)
    finally:
        agent.close()
        receiver.stop()
        acks.stop()
    for m in acks.snapshot():
        validate_payload("ack", m.payload)
    acked = {i for m in acks.snapshot() for i in m.json()["ids"]}
    assert {"ev0:0", "ev19:0", "ev1:0:snap", "clip:clipE:manifest", "clip:clipE:3"} <= acked
    store = Store.open_directory(tmp_path / "centre")
    with store.db.read() as conn:
        clip_path = conn.execute(
            select(clips.c.path).where(clips.c.clip_id == "clipE", clips.c.state == "complete")
        ).scalar_one()
        snap_path = conn.execute(
            select(snapshots.c.path).where(snapshots.c.item_id == "ev1:0:snap")
        ).scalar_one()
    store.close()
    assert Path(clip_path).read_bytes() == body
    assert Path(snap_path).read_bytes()[:2] == b"\xff\xd8"
    # once when the gateway came online, once for its retained status at the reconnection
    resyncs = [m.topic for m in acks.snapshot() if m.json().get("resync")]
    assert resyncs == [f"{ROOT}/gw-test/ack"] * 2


@pytest.mark.slow
def test_two_receivers_in_a_share_group_split_the_load(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    out = tmp_path / "centre"
    receivers = [Receiver(broker.url, out, client_id=f"rx-{i}") for i in range(2)]
    for r in receivers:
        r.start()
        assert r.wait_connected(10)
    time.sleep(0.2)
    agent = Agent(broker, tmp_path / "agent").start()
    try:
        for n in range(200):
            agent.outbox.submit(event(n, camera=f"cam{n % 2}"))
        assert agent.outbox.wait_empty(20), agent.outbox.depth()
    finally:
        agent.close()
        for r in receivers:
            r.stop()
    counts = [r.stats["events"] for r in receivers]
    assert sum(counts) == 200 and min(counts) > 0, counts
    store = Store.open_directory(out)
    for cam in ("cam0", "cam1"):
        with store.db.read() as conn:
            stored = list(
                conn.execute(
                    select(events.c.item_id).where(events.c.camera == cam).order_by(events.c.n)
                ).scalars()
            )
        want = [f"ev{n}:0" for n in range(200) if f"cam{n % 2}" == cam]
        assert stored == want


@pytest.mark.slow
@pytest.mark.parametrize("durable", [True, False], ids=["outbox", "direct"])
def test_centre_events_tool_prints_events_and_snapshots(
    broker: MosquittoBroker, tmp_path: Path, durable: bool
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guetteur",
            "centre",
            "events",
            "-b",
            broker.url,
            "--count",
            "3",
            "--json",
            "--ack",
            "--timeout",
            "20",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = Recorder(broker.url, f"{ROOT}/+/cam/+/event").start()
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline()  # printed once its subscriptions are acknowledged
        assert "listening" in ready, ready
        agent = Agent(broker, tmp_path).start()
        publisher: Publisher = agent.outbox if durable else DirectPublisher(agent.link)
        publisher.submit(snapshot(0))
        for item in (event(0), event(1), event(2, camera="cam2")):
            publisher.submit(item)
        out, err = proc.communicate(timeout=25)
        assert proc.returncode == 0, err
        if durable:
            assert agent.outbox.wait_empty(5)  # --ack played the centre
        agent.close()
    finally:
        proc.kill()
        watcher.stop()
    lines = [json.loads(x) for x in out.splitlines()]
    events = [x for x in lines if x["kind"] == "event"]
    assert [e["id"] for e in events] == ["ev0:0", "ev1:0", "ev2:0"]
    assert events[2]["camera"] == "cam2" and events[0]["type"] == "start"
    if not durable:  # published in submission order: the snapshot came first
        assert lines[0] == {
            "kind": "snapshot",
            "topic": f"{ROOT}/gw-test/cam/cam1/snapshot",
            "id": "ev0:0:snap",
            "event_id": "ev0",
            "camera": "cam1",
            "bytes": 1002,
        }
