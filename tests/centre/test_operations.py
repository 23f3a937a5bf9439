"""Operators at work, end to end on real peers: a real gateway (the agent, a generated camera, a
Pelco-D dome on a socat pty), a real Mosquitto, the centre server. Events reach the API and its
live feed; snapshots, PTZ and live views go through the signed, registered command path; the
register shows them under the operator's name, joined with the gateway's own audit records."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import pytest
import serial

from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import new_client
from tests.centre.harness import Centre, read_sse, watch_live
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.serial import PtyPair
from tests.fixtures.waiting import wait_for
from tests.recorder import Recorder

MOVE_RIGHT_HALF = bytes.fromhex("FF 01 00 02 20 00 23")
STOP = bytes.fromhex("FF 01 00 00 00 00 01")


class PelcoReader:
    """Reads the dome's side of the pty: every 7-byte Pelco-D frame the gateway sends."""

    def __init__(self, device: str) -> None:
        self.frames: list[bytes] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(device,), daemon=True)
        self._thread.start()

    def _read(self, device: str) -> None:
        with serial.Serial(device, 9600, timeout=0.05) as dev:
            buf = b""
            while not self._done.is_set():
                buf += dev.read(max(1, dev.in_waiting))
                while len(buf) >= 7:
                    self.frames.append(buf[:7])
                    buf = buf[7:]

    def stop(self) -> None:
        self._done.set()
        self._thread.join(2)


@pytest.fixture
def dome(pty_pair: PtyPair) -> Iterator[tuple[PtyPair, PelcoReader]]:
    reader = PelcoReader(pty_pair.device)
    yield pty_pair, reader
    reader.stop()


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), mode="r") as container:
        return list(container.decode(video=0))


def register_rows(centre: Centre, **filters: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = centre.login("aud1").ok("GET", "/api/register", **filters)["rows"]
    return rows


@pytest.mark.slow
def test_an_operators_shift_events_snapshot_ptz_live_all_registered(
    broker: MosquittoBroker,
    centre_server: Callable[..., Centre],
    real_gateway: Callable[..., Any],
    dome: tuple[PtyPair, PelcoReader],
) -> None:
    pty, pelco = dome
    centre = centre_server(broker)
    real_gateway(broker, ptz_port=pty.gateway)
    op = centre.login("op1")
    assert op.token is not None
    gws = wait_for(
        lambda: [g for g in op.ok("GET", "/api/gateways")["gateways"] if g["state"] == "online"],
        20,
        "the gateway online in the fleet view",
    )
    assert gws[0]["gateway"] == "gw1"

    # events reach the API and its live feed
    feed = read_sse(centre.url, op.token, {"event"}, 1, 30)
    assert feed and feed[0]["gateway"] == "gw1" and feed[0]["camera"] == "cam1"
    events = op.ok("GET", "/api/events", camera="cam1")["events"]
    assert events and events[0]["event_id"]

    # a snapshot asked for now: signed, sent, stored, served
    snap = op.ok("POST", "/api/gateways/gw1/cameras/cam1/snapshot")
    status, jpeg, _ = op.call("GET", snap["url"], wait=10)
    assert status == 200 and jpeg[:2] == b"\xff\xd8"

    # PTZ: a move and its stop reach the dome; a viewer is refused; unknown gateways too
    reply = op.ok("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "move", "pan": 0.5})
    assert reply["dead_man_s"] == 1.0
    op.ok("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "move", "pan": 0.5})  # renewal
    op.ok("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "stop"})
    wait_for(lambda: STOP in pelco.frames, 5, "the stop on the serial line")
    assert MOVE_RIGHT_HALF in pelco.frames
    viewer = centre.login("view1")
    assert viewer.error("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "stop"}) == (
        403,
        "forbidden",
    )
    assert op.error("POST", "/api/gateways/nowhere/cameras/cam1/ptz", {"action": "stop"}) == (
        404,
        "unknown_gateway",
    )
    assert op.error("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "spin"})[0] == 400
    assert op.error("POST", "/api/gateways/gw1/cameras/nocam/ptz", {"action": "stop"}) == (
        422,
        "unknown_camera",
    )

    # a live view relayed over a WebSocket: decodable from its first byte
    view = op.ok("POST", "/api/live", {"gateway": "gw1", "camera": "cam1"})
    got = watch_live(centre.url, op.token, view["session"], 3.0)
    assert isinstance(got[0], str) and '"type": "session"' in got[0]
    video = b"".join(x for x in got if isinstance(x, bytes))
    frames = decode(video)
    assert frames[0].key_frame and len(frames) >= 25
    op.ok("POST", f"/api/live/{view['session']}/renew")
    assert centre.login("op2").error("DELETE", f"/api/live/{view['session']}") == (403, "forbidden")
    op.ok("DELETE", f"/api/live/{view['session']}")
    assert op.ok("GET", "/api/live")["sessions"] == []

    # the register: the operator's own rows, and the gateway's records joined to them
    live = wait_for(
        lambda: [
            r
            for r in register_rows(centre, operator="op1", action="cmd.live.start")
            if any(x["action"] == "live.session" for x in r["related"])
        ],
        20,
        "the gateway's record of the live view, joined to the centre's",
    )
    assert live[0]["camera"] == "cam1" and live[0]["role"] == "operator"
    gateway_view = next(x for x in live[0]["related"] if x["action"] == "live.session")
    assert gateway_view["operator"] == "op1" and gateway_view["source"] == "gateway"
    ended = register_rows(centre, operator="op1", action="live.end")
    assert ended[0]["session_id"] == view["session"] and ended[0]["detail"]["duration_s"] > 2
    sessions = register_rows(centre, operator="op1", action="ptz.session", camera="cam1")
    assert [r["action"] for r in sessions] == ["ptz.session.start"]
    moves = wait_for(
        lambda: [
            r
            for r in register_rows(centre, operator="op1", action="cmd.ptz")
            if any(x["action"] == "ptz.move" for x in r["related"])
        ],
        20,
        "the gateway's record of the PTZ move, joined by command id",
    )
    assert moves[0]["session_id"] == sessions[0]["session_id"]
    # the renewal of an identical move is sent and signed, not registered again
    rows = register_rows(centre, operator="op1", action="cmd.ptz", camera="cam1")
    # (the gateway's own cmd.ptz records, written before each command it runs, join by command id)
    ours = [r for r in rows if r["action"] == "cmd.ptz" and r["source"] == "centre"]
    assert [r["detail"]["action"] for r in ours] == ["move", "stop"]
    snaps = register_rows(centre, operator="op1", action="cmd.snapshot")
    assert snaps and snaps[0]["camera"] == "cam1"
    assert centre.login("aud1").ok("GET", "/api/register/verify")["verified"] is True


@pytest.mark.slow
def test_a_gateway_that_never_answers_gets_a_timeout_and_the_register_keeps_the_attempt(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    centre = centre_server(broker, commands={"timeout_s": 1.5})
    # a gateway that says it is online, then never answers a command
    ghost = new_client("ghost-gw")
    ghost.connect(broker.host, broker.port)
    ghost.loop_start()
    ghost.publish(
        f"{protocol.DEFAULT_ROOT}/ghost/status", protocol.dumps({"state": "online"}), 1, True
    ).wait_for_publish(5)
    op = centre.login("op1")
    try:
        wait_for(
            lambda: any(g["gateway"] == "ghost" for g in op.ok("GET", "/api/gateways")["gateways"]),
            10,
            "the ghost gateway in the fleet",
        )
        started = time.monotonic()
        assert op.error("POST", "/api/gateways/ghost/cameras/c1/ptz", {"action": "stop"}) == (
            504,
            "timeout",
        )
        assert time.monotonic() - started < 5
    finally:
        ghost.publish(f"{protocol.DEFAULT_ROOT}/ghost/status", b"", 1, True).wait_for_publish(5)
        ghost.disconnect()
        ghost.loop_stop()
    rows = register_rows(centre, gateway="ghost")
    assert [(r["action"], r["outcome"]) for r in rows if r["action"].startswith("cmd.")] == [
        ("cmd.ptz", None),
        ("cmd.ptz.reply", "timeout"),
    ]
    assert rows[-1]["operator"] == "op1"


def test_a_poisoned_gateway_message_is_refused_and_acknowledged_and_the_server_goes_on(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    """Issue 12: a 184-byte manifest declaring 10^10 chunks stopped the receiver for good."""
    centre = centre_server(broker)
    acks = Recorder(broker.url, f"{protocol.DEFAULT_ROOT}/+/ack").start()
    gateway = Recorder(broker.url, "unused/#").start()
    poison = protocol.dumps({"clip_id": "p1", "camera": "cam1", "size": 10**10, "chunk_size": 1,
                             "count": 10**10, "sha256": "0" * 64})  # fmt: skip
    try:
        base = f"{protocol.DEFAULT_ROOT}/gwx"
        gateway.publish_raw(f"{base}/clip/p1/manifest", poison)
        gateway.publish_raw(f"{base}/cam/cam1/event", b"[" * 200_000)  # no id: dropped
        gateway.publish_raw(
            f"{base}/cam/cam1/event", protocol.dumps({"id": "ok1", "type": "start"})
        )
        assert acks.wait(
            lambda m: {"clip:p1:manifest", "ok1"} <= {i for x in m for i in x.json()["ids"]}, 10
        ), "the refused manifest and the next event acknowledged"
    finally:
        acks.stop()
        gateway.stop()
    op = centre.login("op1")
    assert [e["id"] for e in op.ok("GET", "/api/events")["events"]] == ["ok1"]
    health = centre.anonymous().ok("GET", "/api/health")
    assert health["receiver"]["stats"]["refused"] == 1
    assert health["receiver"]["stats"]["bad_messages"] == 2
