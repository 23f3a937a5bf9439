"""The network fault suite: the gateway and the centre on two test hosts (network namespaces joined
by a veth pair, tests/fixtures/netns.py), Mosquitto and the receiver (``guetteur centre receive``)
on the centre's, the agent on the gateway's. Each scenario breaks one thing while events, snapshots
and clips flow, then checks at the receiver: every event id exactly once, in each camera's order,
every snapshot, every clip whole (sha256).

- the broker killed (SIGKILL) and restarted;
- the receiver killed and started again (its persistent session keeps what came meanwhile);
- the agent killed -9 while it drains a backlog, and started again;
- the link cut: the gateway's veth down for longer than the MQTT keep-alive, so both ends hold a
  half-open TCP connection that only keep-alive detects, then up again;
- a camera lost and back: its RTSP server (on the gateway's host) stopped, then restarted: the
  centre hears why it is down, then that it streams again.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.netns import NetPair
from tests.fixtures.waiting import wait_for
from tests.test_durability import count_events as _count_events
from tests.test_durability import read_db as _read_db

REPO = Path(__file__).resolve().parents[2]
TOTAL = 150  # events per scenario (30 per second, 3 cameras, a snapshot every 5, a clip every 40)
AGENT_OPTS: dict[str, object] = dict(
    events=TOTAL,
    rate=30,
    cameras=3,
    clip_every=40,
    clip_bytes=100_000,
    chunk_bytes=32 * 1024,
    retry=1.5,
)
KEEPALIVE_S = 5  # tests/outbox_agent.py's: a half-open link is noticed after 1.5 times this


def read_db(out: Path, sql: str) -> list[tuple[object, ...]]:
    """The receiver's database, once the receiver has made it (connecting would create it)."""
    return _read_db(out, sql) if (out / "receiver.db").exists() else []


def count_events(out: Path) -> int:
    return _count_events(out) if (out / "receiver.db").exists() else 0


class Site:
    """The centre's broker and receiver, the gateway's agent, and what they wrote."""

    def __init__(self, net: NetPair, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.out, self.data, self.log = tmp / "centre", tmp / "agent", tmp / "generated.log"
        self.broker = net.broker(tmp / "mosquitto")
        self.receiver: subprocess.Popen[Any] | None = None
        self.agent: subprocess.Popen[Any] | None = None

    def start_receiver(self) -> None:
        with open(self.tmp / "receiver.log", "ab") as log:
            self.receiver = self.net.popen(
                "centre",
                [sys.executable, "-m", "guetteur", "centre", "receive", "-b", self.broker.url,
                 "--out", str(self.out), "--client-id", "centre-rx-1"],
                cwd=REPO, stdout=log, stderr=log,
            )  # fmt: skip

    def kill_receiver(self) -> None:
        assert self.receiver is not None
        self.receiver.send_signal(signal.SIGKILL)
        self.receiver.wait(10)

    def start_agent(self) -> None:
        argv = [sys.executable, "-m", "tests.outbox_agent", "--broker", self.broker.url,
                "--data", str(self.data), "--log", str(self.log)]  # fmt: skip
        for key, value in AGENT_OPTS.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        with open(self.tmp / "agent.log", "ab") as log:
            self.agent = self.net.popen(
                "gateway", argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log
            )

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(10)

    def lines(self, kind: str) -> list[list[str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [x.split() for x in text.splitlines() if x.startswith(kind + " ")]

    def diagnosis(self) -> str:
        logs = [self.tmp / n for n in ("agent.log", "receiver.log")] + [self.broker.log]
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs if p.exists())

    def wait_delivered(self, timeout: float) -> None:
        wait_for(lambda: len(self.lines("E")) >= TOTAL, TOTAL / 30 + 40, "every event generated")
        try:
            wait_for(lambda: count_events(self.out) >= TOTAL, timeout, "every event stored")
            wait_for(
                lambda: (
                    len(read_db(self.out, "SELECT 1 FROM clips WHERE state='complete'"))
                    >= len(self.lines("C"))
                ),
                timeout,
                "every clip stored",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None

    def check(self) -> None:
        """Every event once and in camera order, every snapshot, every clip whole."""
        expected = self.lines("E")
        stored = read_db(self.out, "SELECT item_id, camera FROM events ORDER BY n")
        ids = [str(r[0]) for r in stored]
        assert len(ids) == len(set(ids)), "an event was stored twice"
        assert sorted(ids) == sorted(e[1] for e in expected), "events lost or unexpected"
        for camera in {e[2] for e in expected}:
            want = [e[1] for e in expected if e[2] == camera]
            got = [str(r[0]) for r in stored if r[1] == camera]
            assert got == want, f"camera {camera}: events out of order"
        snaps = {str(r[0]) for r in read_db(self.out, "SELECT item_id FROM snapshots")}
        assert snaps == {s[1] for s in self.lines("S")}, "snapshots lost or unexpected"
        clips = {
            str(r[0]): str(r[1])
            for r in read_db(self.out, "SELECT clip_id, path FROM clips WHERE state='complete'")
        }
        want_clips = {c[1]: c[3] for c in self.lines("C")}
        assert set(clips) == set(want_clips)
        for clip_id, sha in want_clips.items():
            assert hashlib.sha256(Path(clips[clip_id]).read_bytes()).hexdigest() == sha


@pytest.fixture
def site(netns: NetPair, tmp_path: Path) -> Site:
    s = Site(netns, tmp_path)
    s.broker.start()
    s.start_receiver()
    s.start_agent()
    wait_for(lambda: count_events(s.out) >= 20, 30, "the first events at the receiver")
    return s


def test_broker_killed_and_restarted(site: Site) -> None:
    site.broker.kill()
    time.sleep(3)
    site.broker.start()
    site.wait_delivered(60)
    site.check()


def test_receiver_down_then_up(site: Site) -> None:
    site.kill_receiver()
    time.sleep(3)
    site.start_receiver()
    site.wait_delivered(60)
    site.check()


def test_agent_killed_mid_drain(site: Site) -> None:
    site.broker.kill()  # a backlog builds up while the broker is away
    time.sleep(3)
    before = count_events(site.out)
    site.broker.start()
    wait_for(lambda: count_events(site.out) > before, 30, "the drain to start")
    site.kill_agent()
    site.start_agent()
    site.wait_delivered(60)
    site.check()


@pytest.mark.slow
def test_link_cut_longer_than_keepalive_then_back(site: Site) -> None:
    site.net.cut()  # no FIN, no RST: both ends keep a half-open connection
    time.sleep(2 * KEEPALIVE_S)
    during = count_events(site.out)
    time.sleep(2)
    assert count_events(site.out) == during, "events arrived through a cut link"
    site.net.restore()
    site.wait_delivered(60)
    site.check()


# -- a camera lost and back (the real agent, its camera on the gateway's host) -----------------

RTSP_SCRIPT = REPO / "scripts" / "rtsp-test-server"
RTSP_PORT = 8554


def start_camera(net: NetPair, clip: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "rtsp.log", "ab")  # noqa: SIM115 - lives with the process
    proc = net.popen(
        "gateway",
        ["/usr/bin/python3", str(RTSP_SCRIPT), "--host", "127.0.0.1", "--port", str(RTSP_PORT),
         "--file", str(clip), "--mount", "/cam", "--loop"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    wait_for(lambda: net.listening("gateway", RTSP_PORT), 15, "the camera's RTSP server")
    return proc


def camera_state(out: Path) -> tuple[str, str] | None:
    """The street camera's last state at the centre and the reason the gateway gave."""
    rows = read_db(out, "SELECT state, status FROM camera_status WHERE camera='street'")
    if not rows:
        return None
    state, message = str(rows[0][0]), json.loads(str(rows[0][1]))
    return state, str(message.get("last_error") or "")


def outbox_rows(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp / "data" / "outbox" / "outbox.db", timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def gateway_cseq(tmp: Path) -> int:
    """The last sequence number the gateway gave an event of the street camera."""
    rows = outbox_rows(tmp, "SELECT last FROM cseq WHERE camera='street'")
    return int(rows[0][0]) if rows else 0


def queued_events(tmp: Path) -> int:
    return int(outbox_rows(tmp, "SELECT COUNT(*) FROM items WHERE kind='event'")[0][0])


@pytest.mark.slow
def test_camera_lost_and_back(
    netns: NetPair, tmp_path: Path, h264_clip: Callable[..., Path]
) -> None:
    clip = h264_clip(duration=10.0, motion=((2.0, 8.0),))
    site = Site(netns, tmp_path)
    site.broker.start()
    site.start_receiver()
    camera = start_camera(netns, clip, tmp_path)
    config = tmp_path / "guetteur.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw-net",
                "data_dir": str(tmp_path / "data"),
                "mqtt": {"url": site.broker.url, "keepalive_s": KEEPALIVE_S},
                "recording": {"enabled": False},
                "cameras": [
                    {
                        "id": "street",
                        "url": f"rtsp://127.0.0.1:{RTSP_PORT}/cam",
                        "open_timeout_s": 2,
                        "read_timeout_s": 2,
                        "stall_timeout_s": 3,
                    }
                ],
            }
        )
    )
    with open(tmp_path / "agent.log", "ab") as log:
        netns.popen(
            "gateway",
            [sys.executable, "-m", "guetteur", "run", "-c", str(config)],
            cwd=REPO, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        state = lambda: camera_state(site.out) or ("", "")  # noqa: E731
        wait_for(lambda: state()[0] == "streaming", 40, "the centre to hear the camera streams")
        camera.terminate()
        camera.wait(10)
        wait_for(
            lambda: state()[0] not in ("", "streaming"),
            30,
            "the centre to hear that the camera is down",
        )
        down, why = state()
        assert down in ("reconnecting", "stalled", "failed"), down
        assert why, f"no reason given for the camera being {down}"
        start_camera(netns, clip, tmp_path)
        wait_for(lambda: state()[0] == "streaming", 40, "the camera streaming again")
        # its events: every one the gateway numbered reaches the centre once, in order
        wait_for(lambda: gateway_cseq(tmp_path) >= 2, 40, "events from the camera")
        wait_for(lambda: queued_events(tmp_path) == 0, 30, "the gateway's events delivered")
        stored = read_db(site.out, "SELECT cseq FROM events WHERE camera='street' ORDER BY n")
        assert [r[0] for r in stored] == list(range(1, gateway_cseq(tmp_path) + 1))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.diagnosis()}") from None
