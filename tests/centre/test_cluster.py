"""Several servers, one PostgreSQL, one broker — and a database that goes away: real Mosquitto,
a real private PostgreSQL, a gateway's real outbox. Every event is stored exactly once, in each
camera's order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from guetteur import keyfiles
from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import events
from guetteur.centre.server import ServerThread
from tests.centre.harness import Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.waiting import wait_for
from tests.test_outbox import Agent, event

CAMERAS = 3


def stored(url: str) -> list[tuple[str, str]]:
    db = Database(url, pool_size=1)
    try:
        with db.read() as conn:
            return [
                (str(r[0]), str(r[1]))
                for r in conn.execute(
                    select(events.c.item_id, events.c.camera).order_by(events.c.n)
                )
            ]
    finally:
        db.dispose()


def check_exactly_once_in_order(url: str, total: int) -> None:
    rows = stored(url)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert sorted(ids) == sorted(f"ev{n}:0" for n in range(total)), "events lost"
    for c in range(CAMERAS):
        got = [i for i, cam in rows if cam == f"cam{c}"]
        assert got == [f"ev{n}:0" for n in range(total) if n % CAMERAS == c], f"cam{c} order"


@pytest.mark.slow
def test_two_servers_sharing_postgresql_through_a_restart_store_every_event_once(
    broker: MosquittoBroker,
    postgres: PostgresServer,
    centre_server: Callable[..., Centre],
    tmp_path: Path,
) -> None:
    url = postgres.new_database()
    key = tmp_path / "signing.pem"
    keyfiles.generate(key)
    shared = {"database_url": url, "media": tmp_path / "media", "key_file": key}
    a = centre_server(broker, server_id="srv1", **shared)
    b = centre_server(broker, server_id="srv2", **shared)
    agent = Agent(broker, tmp_path / "agent", retry_s=2.0).start()
    total = 450
    counts: dict[str, int] = {}

    def produce() -> None:
        for n in range(total):
            agent.outbox.submit(event(n, camera=f"cam{n % CAMERAS}"))
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(stored(url)) >= 120, 30, "events stored before the restart")
        assert b.thread.server is not None and b.thread.server.receiver is not None
        counts["srv2 before its restart"] = b.thread.server.receiver.stats["events"]
        b.thread.stop()  # a restart of one server, events still flowing
        time.sleep(2.0)
        b.thread = ServerThread(b.config).start()
        assert b.thread.wait_receiver(10)
        producer.join(60)
        assert agent.outbox.wait_empty(60), agent.outbox.depth()
    finally:
        producer.join(60)
        agent.close()
    assert a.thread.server is not None and a.thread.server.receiver is not None
    counts["srv1"] = a.thread.server.receiver.stats["events"]
    assert counts["srv1"] > 0 and counts["srv2 before its restart"] > 0, counts
    check_exactly_once_in_order(url, total)
    # both servers show the same events through the API
    newest = {c.login("view1").ok("GET", "/api/events", limit=5)["events"][0]["id"] for c in (a, b)}
    assert len(newest) == 1


@pytest.mark.slow
def test_a_database_that_goes_away_and_comes_back_loses_nothing(
    broker: MosquittoBroker,
    private_postgres: PostgresServer,
    centre_server: Callable[..., Centre],
    tmp_path: Path,
) -> None:
    url = private_postgres.new_database()
    centre = centre_server(broker, database_url=url)
    op = centre.login("op1")
    agent = Agent(broker, tmp_path / "agent", retry_s=2.0).start()
    try:
        for n in range(30):
            agent.outbox.submit(event(n, camera=f"cam{n % CAMERAS}"))
        wait_for(lambda: len(stored(url)) == 30, 20, "the first 30 events")
        private_postgres.stop("immediate")  # like a crash of the database server
        for n in range(30, 90):
            agent.outbox.submit(event(n, camera=f"cam{n % CAMERAS}"))
        assert op.error("GET", "/api/events") == (503, "database_unavailable")
        health = centre.anonymous().ok("GET", "/api/health")
        wait_for(
            lambda: centre.anonymous().ok("GET", "/api/health")["receiver"]["database"] is False,
            15,
            "the receiver to notice the database is gone",
        )
        assert health["broker"] is True
        time.sleep(3.0)
        private_postgres.start()
        assert agent.outbox.wait_empty(90), agent.outbox.depth()
    finally:
        agent.close()
    check_exactly_once_in_order(url, 90)
    assert len(op.ok("GET", "/api/events", limit=1000)["events"]) == 90
