"""`guetteur centre ptz` through a real centre server, to a real Mosquitto, the agent's Link +
CommandDispatcher + PtzService, and a Pelco-D dome on a socat pty: a held move is renewed past
the dead-man timeout, then stopped; the server signs each command for the logged-in operator."""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import serial

from guetteur.centre.tools import ptz as centre_ptz
from guetteur.config import CameraConfig, MqttConfig, PtzConfig
from guetteur.ptz.service import PtzService
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.link import DirectPublisher, Link
from tests.centre.harness import PASSWORD, Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.serial import PtyPair
from tests.fixtures.waiting import wait_for

MOVE_RIGHT_HALF = bytes.fromhex("FF 01 00 02 20 00 23")  # pan speed round(0.5 * 0x3F) = 0x20
STOP = bytes.fromhex("FF 01 00 00 00 00 01")


@pytest.fixture
def agent(
    broker: MosquittoBroker,
    pty_pair: PtyPair,
    centre_server: Callable[..., Centre],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PtyPair]:
    dispatcher = CommandDispatcher()
    link = Link(MqttConfig(url=broker.url), "gw1", dispatcher)
    service = PtzService(
        [
            CameraConfig(
                id="dome",
                url="test:bars",
                ptz=PtzConfig(protocol="pelco-d", serial_port=pty_pair.gateway),
            )
        ],
        AuditTrail(DirectPublisher(link), "gw1"),
    )
    service.register(dispatcher)
    service.start()
    link.start()
    assert link.wait_subscribed(10)
    # like the gateway: a retained online status, so the centre knows it
    link.publish_json(link.topics.status, {"state": "online", "gateway": "gw1"}, retain=True)
    centre = centre_server(broker)
    wait_for(
        lambda: centre.login("op1").ok("GET", "/api/gateways")["gateways"], 10, "gw1 at the centre"
    )
    monkeypatch.setenv("GUETTEUR_SERVER", centre.url)
    monkeypatch.setenv("GUETTEUR_USER", "op1")
    monkeypatch.setenv("GUETTEUR_PASSWORD", PASSWORD)
    monkeypatch.delenv("GUETTEUR_TOKEN", raising=False)
    yield pty_pair
    service.close()
    link.stop()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    centre_ptz.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_held_move_is_renewed_then_stopped(
    broker: MosquittoBroker, agent: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    frames: list[tuple[float, bytes]] = []
    done = threading.Event()

    def listen() -> None:
        with serial.Serial(agent.device, 9600, timeout=0.05) as dev:
            buf = b""
            while not done.is_set():
                buf += dev.read(max(1, dev.in_waiting))
                while len(buf) >= 7:
                    frames.append((time.monotonic(), buf[:7]))
                    buf = buf[7:]

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    args = parse(
        "--gateway", "gw1", "--camera", "dome", "move", "--pan", "0.5", "--repeat-for", "2.5"
    )
    started = time.monotonic()
    assert centre_ptz.run(args) == 0
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # long enough for a (wrong) dead-man stop to show up after the last frame
    done.set()
    reader.join(2)
    assert 2.4 <= elapsed <= 5.0
    kinds = [f for _, f in frames]
    assert kinds[-1] == STOP and kinds.count(STOP) == 1  # only the final, explicit stop
    assert set(kinds[:-1]) == {MOVE_RIGHT_HALF} and len(kinds) >= 6
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert max(gaps) < 1.0  # every renewal came before the dead-man timeout
    out = capsys.readouterr().out
    assert out.startswith("ok ") and "dead_man_s=1.0" in out


def test_refusal_exits_1_with_the_reason(
    broker: MosquittoBroker, agent: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("-g", "gw1", "--camera", "dome", "goto_preset", "--preset", "99")
    assert centre_ptz.run(args) == 1
    assert "refused [out_of_range]" in capsys.readouterr().err
