"""Acceptance chaos test of the durable link, on a real Mosquitto.

Events (with snapshots) and clips are generated continuously by an agent process (Outbox + Link);
the broker is killed (SIGKILL) for a few seconds and restarted; the agent is killed -9 once while
it drains its backlog and restarted; the receiver is stopped for a while. In the end every event
id reaches the receiver exactly once, in per-camera order, and every clip's sha256 matches.
(The long version — a 20 s broker outage — is `bench/drain_bench.py --chaos`.)
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guetteur.centre.receiver.mqtt import Receiver
from guetteur.dev.broker import PrivateBroker
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


def start_agent(broker_url: str, data: Path, log: Path, **opts: object) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "tests.outbox_agent",
        "--broker",
        broker_url,
        "--data",
        str(data),
        "--log",
        str(log),
    ]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_db(out: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(out / "receiver.db", timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        db.close()


def count_events(out: Path) -> int:
    rows = read_db(out, "SELECT COUNT(*) FROM events")
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


def run_chaos(
    broker: PrivateBroker,
    tmp_path: Path,
    outage_s: float = 5.0,
    total: int = 420,
    receiver_pause_s: float = 3.0,
) -> dict[str, int]:
    """The scenario; returns the last receiver's counters. Raises AssertionError on a loss, a
    duplicate, a disorder or a bad clip."""
    out, data, log = tmp_path / "centre", tmp_path / "agent", tmp_path / "generated.log"

    def new_receiver() -> Receiver:
        r = Receiver(broker.url, out, client_id="centre-rx-1")
        r.start()
        assert r.wait_connected(10), "receiver could not connect"
        return r

    receiver = new_receiver()
    agent_opts = dict(
        events=total,
        rate=30,
        cameras=3,
        clip_every=60,
        clip_bytes=200_000,
        chunk_bytes=32 * 1024,
        retry=1.5,
        drain_bps=400_000,
    )
    agent = start_agent(broker.url, data, log, **agent_opts)
    try:
        wait_for(lambda: count_events(out) >= 20, 20, "the first events at the receiver")

        # 1. broker crash: no broker for a while, events keep coming
        broker.kill()
        time.sleep(outage_s)
        before = count_events(out)
        broker.start()

        # 2. agent killed -9 while it drains the backlog of the outage
        wait_for(lambda: count_events(out) > before, 30, "the drain to start after the outage")
        agent.kill()
        agent.wait(10)
        agent = start_agent(broker.url, data, log, **agent_opts)

        # 3. receiver stopped for a while (its persistent session queues for it meanwhile)
        wait_for(lambda: count_events(out) > before + 60, 30, "events after the agent restart")
        receiver.stop()
        time.sleep(receiver_pause_s)
        receiver = new_receiver()

        lines = lambda: log.read_text().splitlines()  # noqa: E731
        wait_for(
            lambda: sum(1 for x in lines() if x.startswith("E ")) >= total,
            total / 30 + 40,
            "the agent to generate every event",
        )
        expected_events = [x.split() for x in lines() if x.startswith("E ")]
        wait_for(
            lambda: count_events(out) >= len(expected_events), 40, "every event at the receiver"
        )
        expected_clips = {x.split()[1]: x.split()[3] for x in lines() if x.startswith("C ")}
        wait_for(
            lambda: (
                len(read_db(out, "SELECT 1 FROM clips WHERE state='complete'"))
                >= len(expected_clips)
            ),
            40,
            "every clip at the receiver",
        )
    finally:
        agent.kill()
        agent.wait(10)
        receiver.stop()

    stored = read_db(out, "SELECT item_id, camera FROM events ORDER BY n")
    ids = [str(r[0]) for r in stored]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert sorted(ids) == sorted(e[1] for e in expected_events), "events lost or unexpected"
    for camera in {e[2] for e in expected_events}:
        want = [e[1] for e in expected_events if e[2] == camera]
        got = [str(r[0]) for r in stored if r[1] == camera]
        assert got == want, f"camera {camera}: events out of order"
    clips = {
        r[0]: r[1] for r in read_db(out, "SELECT clip_id, path FROM clips WHERE state='complete'")
    }
    assert set(clips) == set(expected_clips)
    for clip_id, sha in expected_clips.items():
        assert hashlib.sha256(Path(str(clips[clip_id])).read_bytes()).hexdigest() == sha
    snaps = {str(r[0]) for r in read_db(out, "SELECT item_id FROM snapshots")}
    assert snaps == {x.split()[1] for x in log.read_text().splitlines() if x.startswith("S ")}
    last = {f"last_receiver_{k}": v for k, v in receiver.stats.items()}
    return {"events": len(ids), "clips": len(clips), "snapshots": len(snaps), **last}


@pytest.mark.slow
def test_every_event_once_in_order_through_broker_agent_and_receiver_failures(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    counts = run_chaos(broker, tmp_path, outage_s=5.0, total=420)
    assert counts["events"] == 420 and counts["clips"] == 7
