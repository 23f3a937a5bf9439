"""The centre receiver: storage decisions on bad input (real SQLite), and end to end on a real
Mosquitto with the outbox (acks, shared subscriptions), plus `guetteur centre events`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guetteur.centre.receiver.mqtt import Receiver
from guetteur.centre.receiver.store import Incoming, Store
from guetteur.uplink import protocol
from guetteur.uplink.link import DirectPublisher
from guetteur.uplink.publish import Publisher
from tests.contract import validate_payload
from tests.fixtures.broker import MosquittoBroker
from tests.recorder import Recorder
from tests.test_outbox import Agent, event, make_clip, snapshot

ROOT = protocol.DEFAULT_ROOT
REPO = Path(__file__).resolve().parents[1]


def manifest_for(clip_id: str, body: bytes, chunk: int) -> dict[str, object]:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return {
        "id": protocol.clip_manifest_item_id(clip_id),
        "clip_id": clip_id,
        "camera": "cam1",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "chunk_size": chunk,
        "count": len(chunks),
        "chunk_sha256": [hashlib.sha256(c).hexdigest() for c in chunks],
    }


def msg(topic: str, payload: bytes, **props: str) -> Incoming:
    return Incoming(f"{ROOT}/gw1/{topic}", payload, props, None)


def test_clip_reassembly_rejects_bad_chunks_and_a_wrong_sha256(tmp_path: Path) -> None:
    store = Store(tmp_path)
    body = os.urandom(10_000)
    man = manifest_for("c1", body, 4096)
    # a chunk before its manifest is not acknowledged (it will come again)
    r = store.handle_batch([msg("clip/c1/0", body[:4096])])
    assert not r.ids and store.stats["early_chunks"] == 1
    r = store.handle_batch([msg("clip/c1/manifest", protocol.dumps(man))])
    assert not r.ids["gw1"]  # the manifest is acknowledged only once the clip is verified
    bad = [
        msg("clip/c1/0", body[:4000]),  # truncated
        msg("clip/c1/1", body[4096:8192] + b"extra"),  # oversized
        msg("clip/c1/2", b"\x00" * (10_000 - 8192)),  # right size, wrong content
        msg("clip/c1/9", b"x"),  # beyond the manifest
        msg("clip/c1/manifest", b"{broken"),
        msg("clip/c1/manifest", protocol.dumps({**man, "count": 7})),  # inconsistent
        msg("clip/c1/zzz", b"x"),
        msg("clip/..%2f/0", b"x"),
    ]
    r = store.handle_batch(bad)
    assert not r.ids["gw1"]
    assert r.resend["gw1"] == ["clip:c1:0", "clip:c1:1", "clip:c1:2"]
    assert store.stats["bad_chunks"] == 4
    r = store.handle_batch([msg(f"clip/c1/{n}", body[n * 4096 : (n + 1) * 4096]) for n in range(3)])
    assert r.ids["gw1"] == ["clip:c1:0", "clip:c1:1", "clip:c1:2", "clip:c1:manifest"]
    assert (tmp_path / "clips" / "gw1" / "c1.mp4").read_bytes() == body
    assert not (tmp_path / "partial" / "gw1" / "c1").exists()
    # duplicates after completion are acknowledged again, nothing changes
    r = store.handle_batch(
        [msg("clip/c1/1", body[4096:8192]), msg("clip/c1/manifest", protocol.dumps(man))]
    )
    assert r.ids["gw1"] == ["clip:c1:1", "clip:c1:manifest"]


def test_sha256_mismatch_of_the_whole_clip_asks_for_every_chunk(tmp_path: Path) -> None:
    store = Store(tmp_path)
    body = os.urandom(9000)
    man = manifest_for("c2", body, 4096)
    man.pop("chunk_sha256")  # without per-chunk hashes only the whole-clip sha can catch it
    man["sha256"] = hashlib.sha256(b"something else").hexdigest()
    store.handle_batch([msg("clip/c2/manifest", protocol.dumps(man))])
    r = store.handle_batch([msg(f"clip/c2/{n}", body[n * 4096 : (n + 1) * 4096]) for n in range(3)])
    assert r.resend["gw1"] == ["clip:c2:0", "clip:c2:1", "clip:c2:2"]
    assert "clip:c2:manifest" not in r.ids["gw1"]
    assert store.stats["bad_clips"] == 1
    assert not (tmp_path / "clips" / "gw1" / "c2.mp4").exists()
    # the gateway repeats the manifest: the receiver asks for what it lacks
    r = store.handle_batch([msg("clip/c2/manifest", protocol.dumps(man))])
    assert r.resend["gw1"] == ["clip:c2:0", "clip:c2:1", "clip:c2:2"]


def test_events_are_deduplicated_and_stored_in_camera_order(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def ev(n: int, cseq: int, epoch: str = "E1") -> Incoming:
        body = protocol.dumps({"id": f"e{n}:0", "event_id": f"e{n}", "type": "start"})
        return msg("cam/cam1/event", body, item_id=f"e{n}:0", epoch=epoch, cseq=str(cseq))

    r = store.handle_batch([ev(1, 1), ev(3, 3), ev(4, 4), ev(3, 3)])
    assert r.ids["gw1"] == ["e1:0", "e3:0", "e4:0", "e3:0"]  # held ones are durable: acked
    r = store.handle_batch([ev(2, 2), ev(1, 1), ev(5, 5)])
    order = [x[0] for x in store.db.execute("SELECT item_id FROM events ORDER BY n")]
    assert order == ["e1:0", "e2:0", "e3:0", "e4:0", "e5:0"]
    # a new outbox on the gateway (new epoch) starts its own sequence
    store.handle_batch([ev(7, 2, "E2"), ev(6, 1, "E2")])
    order = [x[0] for x in store.db.execute("SELECT item_id FROM events ORDER BY n")]
    assert order[-2:] == ["e6:0", "e7:0"]
    # junk never crashes the store
    r = store.handle_batch(
        [
            msg("cam/cam1/event", b"\x00\xff"),
            msg("cam/cam1/event", b"[]"),
            msg("cam/cam1/event", protocol.dumps({"type": "start"})),
            msg("cam/bad+id/event", b"{}"),
            msg("audit", b"nope"),
            Incoming("elsewhere/topic", b"{}", {}, None),
        ]
    )
    assert not r.ids
    assert store.stats["bad_messages"] == 6


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
    out = tmp_path / "centre"
    assert (out / "clips" / "gw-test" / "clipE.mp4").read_bytes() == body
    assert (out / "snapshots" / "gw-test" / "cam1" / "ev1_0_snap.jpg").read_bytes()[
        :2
    ] == b"\xff\xd8"
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
    store = Store(out)
    for cam in ("cam0", "cam1"):
        stored = [
            x[0]
            for x in store.db.execute(
                "SELECT item_id FROM events WHERE camera=? ORDER BY n", (cam,)
            )
        ]
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
