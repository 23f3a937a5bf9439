"""Outbox commits off the hot threads, on a running gateway (real camera pipeline, real Mosquitto,
real SQLite): the outbox database stalls the way a worn SD card's fsync does — another connection
holds its write lock for longer than the commit's busy timeout — while a camera makes events and
the broker restarts.

Before the fix the commits of ``submit`` ran under the outbox lock on the camera's analysis
thread: analysis stood still for the whole stall, the events of the stall failed with "database is
locked" and were lost, and the link's network thread, which publishes the status (outbox depth)
when it reconnects, waited for that lock instead of talking to the broker."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from guetteur.config import OutboxConfig, validate_config
from guetteur.runtime.gateway import Gateway
from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail, AuditUnavailable
from guetteur.uplink.mqttutil import new_client, parse_broker_url
from guetteur.uplink.outbox import service
from guetteur.uplink.outbox.service import DURABLE_WAIT_S, Outbox
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.waiting import wait_for
from tests.test_outbox import event, snapshot
from tests.test_outbox_service import MemoryLink

GW = "gw-stall"
STALL_S = 12.0  # longer than the store's 10 s busy timeout: a commit that waits, fails


class StatusWatcher:
    """A centre-side MQTT client noting when the gateway's status messages arrive."""

    def __init__(self, url: str) -> None:
        addr = parse_broker_url(url)
        self.seen: list[tuple[float, str]] = []
        self.client = new_client("status-watch")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(
            protocol.Topics(protocol.DEFAULT_ROOT, GW).status, qos=1
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async(addr.host, addr.port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            state = str(json.loads(msg.payload)["state"])
        except (ValueError, KeyError, TypeError):
            state = "?"
        self.seen.append((time.monotonic(), state))

    def online_after(self, t: float) -> float | None:
        return next((at for at, s in self.seen if at > t and s == "online"), None)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stall_database(db_path: Path, seconds: float, held: threading.Event) -> None:
    db = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN EXCLUSIVE")  # no other connection can begin a write until we end
        held.set()
        time.sleep(seconds)
        db.execute("ROLLBACK")
    finally:
        db.close()


def stored_events(db_path: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        rows = db.execute("SELECT item_id, cseq FROM items WHERE kind='event' ORDER BY seq")
        return [(str(i), int(c)) for i, c in rows.fetchall()]
    finally:
        db.close()


@pytest.mark.slow
def test_a_stalled_outbox_disk_stalls_neither_analysis_nor_the_link(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guetteur.runtime.gateway")
    config = validate_config(
        {
            "gateway_id": GW,
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": broker.url, "keepalive_s": 5, "reconnect_max_s": 1.0},
            "recording": {"enabled": False},
            # nothing is acknowledged (no receiver): every event stays in the outbox database
            "cameras": [{"id": "street", "url": "test:walk?start=0.5&end=60&duration=60&gop=1"}],
            "events": {"update_interval_s": 0.5, "snapshot_width": 320},
        }
    )
    db_path = tmp_path / "data" / "outbox" / "outbox.db"
    gateway = Gateway(config)
    watcher = StatusWatcher(broker.url)
    gateway.start()
    worker = gateway.workers["street"]
    try:
        assert gateway.link.wait_connected(10)
        wait_for(lambda: len(stored_events(db_path)) >= 2, 30, "the camera's first events")
        held = threading.Event()
        staller = threading.Thread(target=stall_database, args=(db_path, STALL_S, held))
        staller.start()
        assert held.wait(10)
        stall_started = time.monotonic()
        # the broker restarts in the middle of the stall: the link reconnects and says "online"
        broker.kill()
        time.sleep(0.5)
        restarted = time.monotonic()
        broker.start()
        samples: list[tuple[float, int]] = []
        while staller.is_alive():
            samples.append((time.monotonic(), worker.frames_analysed))
            time.sleep(0.1)
        staller.join()
        stall_s = time.monotonic() - stall_started

        online = watcher.online_after(restarted)
        assert online is not None and online - restarted < 5.0, (
            f"the gateway said 'online' {None if online is None else online - restarted} s "
            f"after the broker came back, during a {stall_s:.0f} s disk stall"
        )
        # keep-alive went on: the broker never gave up on the gateway (its Last Will "offline")
        dropped = [at - restarted for at, s in watcher.seen if at > online and s != "online"]
        assert not dropped, f"the broker dropped the gateway {dropped} s after restarting"
        # analysis went on: frames analysed all along the stall (at most one SUBMIT_WAIT_S hold)
        changes = [b[0] for a, b in itertools.pairwise(samples) if a[1] != b[1]]
        gaps = [b - a for a, b in itertools.pairwise([stall_started, *changes, samples[-1][0]])]
        assert max(gaps) < 4.0, f"analysis stood still for {max(gaps):.1f} s of the stall"

        # nothing lost: every event the camera made is in the outbox, once, in camera order
        made = sum(1 for r in caplog.records if r.getMessage().startswith("camera street: event"))
        wait_for(lambda: len(stored_events(db_path)) >= made, 20, "the stalled events committed")
        gateway.stop()
        made = sum(1 for r in caplog.records if r.getMessage().startswith("camera street: event"))
        events = stored_events(db_path)
        assert len(events) == made, f"{made} events made, {len(events)} stored"
        assert len({i for i, _ in events}) == len(events)
        assert [c for _, c in events] == list(range(1, len(events) + 1))
    finally:
        gateway.stop()
        watcher.close()


def test_a_full_hand_off_keeps_every_event_and_refuses_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the disk is stalled, submits return at once after the first has waited its bound;
    past the hand-off's bound events are still kept (in memory, counted), snapshots refused;
    when the disk answers, every event is committed once, in submission order."""
    monkeypatch.setattr(service, "SUBMIT_QUEUE_ITEMS", 4)
    outbox = Outbox(OutboxConfig(), tmp_path, MemoryLink(), "gw-full")
    db_path = tmp_path / "outbox" / "outbox.db"
    held = threading.Event()
    staller = threading.Thread(target=stall_database, args=(db_path, 4.0, held))
    staller.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        outbox.submit(event(0))  # waits for its commit, at most SUBMIT_WAIT_S
        first = time.monotonic() - t0
        assert service.SUBMIT_WAIT_S <= first < service.SUBMIT_WAIT_S + 1.0
        t0 = time.monotonic()
        for n in range(1, 10):
            outbox.submit(event(n))
            if n % 3 == 0:
                outbox.submit(snapshot(n))
        assert time.monotonic() - t0 < 0.5, "submits waited for a stalled disk"
        assert outbox.counters["spilled"] >= 5
        assert outbox.counters["dropped_snapshots"] == 3  # all arrived past the bound
        assert any("stalled" in w for w in outbox.warnings())
        assert outbox.depth()["events"] == 10  # waiting in memory, counted in the status
    finally:
        staller.join()
    wait_for(lambda: len(stored_events(db_path)) == 10, 15, "the events committed")
    assert [i for i, _ in stored_events(db_path)] == [f"ev{n}:0" for n in range(10)]
    assert [c for _, c in stored_events(db_path)] == list(range(1, 11))
    wait_for(
        lambda: not any("stalled" in w for w in outbox.warnings()), 5, "the stall warning to clear"
    )
    outbox.close()


@pytest.mark.slow
def test_an_audit_record_is_on_disk_before_its_action_or_the_action_is_refused(
    tmp_path: Path,
) -> None:
    """Submits no longer wait for a stalled disk, but a command's audit record must be stored
    before the command runs: during a stall ``require`` refuses (``audit_unavailable``) within
    twice ``DURABLE_WAIT_S``, and the record it took back is never stored, even once the disk
    answers; after that, records are stored again."""
    outbox = Outbox(OutboxConfig(), tmp_path, MemoryLink(), "gw-audit")
    trail = AuditTrail(outbox, "gw-audit")
    db_path = tmp_path / "outbox" / "outbox.db"
    held = threading.Event()
    # longer than the store's busy timeout: the commit holding the record fails
    staller = threading.Thread(target=stall_database, args=(db_path, STALL_S, held))
    staller.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable):
            trail.require("cmd.ptz", camera="dome", outcome="accepted")
        assert time.monotonic() - t0 < 2 * DURABLE_WAIT_S + 1.0
    finally:
        staller.join()
    stored = trail.require("cmd.ptz", camera="dome", outcome="accepted")
    records = [json.loads(p) for (p,) in sqlite_rows(db_path, "SELECT payload FROM items")]
    assert [r["id"] for r in records] == [stored], "the refused action's record was stored"
    outbox.close()


def sqlite_rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()
