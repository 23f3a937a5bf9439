"""The live feed of what the gateways send, for server-sent events (``/api/events/stream``).

One poller per server reads what any server of the centre stored (the receivers share the
database): new events, snapshots, and gateway or camera state changes, every ``poll_s``, and at
once when this server's own receiver has just stored something (``poke``). It looks back a few
seconds each time and remembers what it pushed, because rows committed by another server's
longer transaction can appear with an earlier number.

Hand-off: each subscriber has a bounded queue; a subscriber too slow to keep up is closed (its
browser reconnects with ``Last-Event-ID`` and catches up from the database) rather than let the
queue grow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sqlalchemy import select

from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import camera_status, events, gateways, snapshots
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

QUEUE = 1000
SEEN = 20000


def event_json(row: Any) -> dict[str, Any]:
    """An event row as the API shows it."""
    try:
        body = json.loads(row["message"])
    except (ValueError, TypeError):
        body = {}
    return {
        "n": row["n"],
        "gateway": row["gateway"],
        "camera": row["camera"],
        "id": row["item_id"],
        "event_id": row["event_id"],
        "seq": row["seq"],
        "type": row["type"],
        "start": row["started"],
        "end": row["ended"],
        "score": row["score"],
        "labels": body.get("labels") if isinstance(body.get("labels"), list) else [],
        "boxes": body.get("boxes") if isinstance(body.get("boxes"), list) else [],
        "clock_synced": body.get("clock_synced"),
        "received": row["received"],
    }


def snapshot_json(row: Any) -> dict[str, Any]:
    return {
        "gateway": row["gateway"],
        "camera": row["camera"],
        "id": row["item_id"],
        "event_id": row["event_id"],
        "request_id": row["request_id"],
        "taken": row["taken"],
        "bytes": row["bytes"],
        "received": row["received"],
        "url": f"/api/snapshots/{row['gateway']}/{row['item_id']}",
    }


class EventFeed:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        poll_s: float = 0.5,
        lookback_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.executor = executor
        self.poll_s = poll_s
        self.lookback_s = lookback_s
        self.clock = clock
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._states: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._loop.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for q in list(self.subscribers):
            q.put_nowait(None)

    def poke(self) -> None:
        """Thread-safe: this server just stored something; look now."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(q)

    async def _run(self) -> None:
        since = iso_ms(self.clock() - self.lookback_s)
        await self._loop.run_in_executor(self.executor, self._poll, since, True)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            started = self.clock()
            try:
                items = await self._loop.run_in_executor(
                    self.executor, self._poll, iso_ms(started - self.lookback_s), False
                )
            except Exception as exc:
                log.warning("event feed: database read failed (%s); retrying", exc)
                await asyncio.sleep(2.0)
                continue
            for item in items:
                for q in list(self.subscribers):
                    try:
                        q.put_nowait(item)
                    except asyncio.QueueFull:  # too slow: it reconnects and catches up
                        self.subscribers.discard(q)
                        q.get_nowait()
                        q.put_nowait(None)

    def _new(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return True

    def _poll(self, since: str, prime: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.db.read() as conn:
            for row in conn.execute(
                select(events).where(events.c.received >= since).order_by(events.c.n)
            ).mappings():
                if self._new(f"e{row['n']}"):
                    out.append({"kind": "event", "id": row["n"], **event_json(row)})
            for row in conn.execute(
                select(snapshots).where(snapshots.c.received >= since)
            ).mappings():
                if self._new(f"s{row['gateway']}/{row['item_id']}"):
                    out.append({"kind": "snapshot", **snapshot_json(row)})
            for row in conn.execute(
                select(gateways.c.gateway, gateways.c.state, gateways.c.since)
            ).mappings():
                key = ("", row["gateway"])
                state = (row["state"], row["since"])
                if self._states.get(key) != state:
                    self._states[key] = state
                    out.append({"kind": "gateway", "gateway": row["gateway"],
                                "state": row["state"], "since": row["since"]})  # fmt: skip
            for row in conn.execute(
                select(camera_status.c.gateway, camera_status.c.camera, camera_status.c.state)
            ).mappings():
                key = (row["gateway"], row["camera"])
                state = (row["state"], None)
                if self._states.get(key) != state:
                    self._states[key] = state
                    out.append({"kind": "camera", "gateway": row["gateway"],
                                "camera": row["camera"], "state": row["state"]})  # fmt: skip
        return [] if prime else out
