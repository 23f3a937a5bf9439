"""``guetteur centre serve``: one process, one ``centre.yaml``.

Threads and hand-offs of one server::

    broker ──► receiver paho thread ──queue (bounded by MQTT Receive Maximum)──► "receiver"
               thread: Store (one transaction per batch) ──► acks; pokes the event feed
    broker ◄─► commands paho thread (CentreClient): replies, live fragments ──call_soon_threadsafe──►
    event loop (main thread): aiohttp API, SSE feed, live relay, periodic tasks
               ──► worker threads (ThreadPoolExecutor): SQLAlchemy, command round trips

Periodic tasks: every second the live relay's leases; every 5 s idle PTZ sessions and ready
extractions; every ``retention.interval_minutes`` the purge. ``centre receive`` runs the same
receiver and store without the API (``StoreOnly``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from sqlalchemy import text

from guetteur import keyfiles
from guetteur.centre.accounts import Accounts
from guetteur.centre.api import make_app
from guetteur.centre.api.base import Services
from guetteur.centre.api.feed import EventFeed
from guetteur.centre.client import CentreClient, CentreError
from guetteur.centre.commands import Commander
from guetteur.centre.config import CentreConfig
from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import upgrade
from guetteur.centre.extraction import Extractions
from guetteur.centre.media import MediaStore
from guetteur.centre.receiver.mqtt import Receiver
from guetteur.centre.receiver.parse import Limits
from guetteur.centre.receiver.store import Replies, Store
from guetteur.centre.register import Register
from guetteur.centre.relay import LiveRelay
from guetteur.centre.retention import Retention
from guetteur.uplink.command_auth import Signer

log = logging.getLogger(__name__)


def make_receiver(config: CentreConfig, store: Store) -> Receiver:
    m = config.mqtt
    tls = m.tls
    return Receiver(
        m.url,
        store,
        root=m.root,
        share_group=m.share_group or None,
        client_id=m.client_id or f"{config.centre_id}-{config.server_name}-rx",
        ca_file=tls.ca_file if tls else None,
        cert_file=tls.cert_file if tls else None,
        key_file=tls.key_file if tls else None,
    )


def make_store(config: CentreConfig, db: Database, register: Register) -> Store:
    limits = Limits(**config.receiver.limits.model_dump())
    return Store(db, MediaStore(config.media_dir), config.mqtt.root, limits, register)


def open_database(config: CentreConfig) -> Database:
    db = Database(config.database.url, config.database.pool_size)
    if config.database.migrate_on_start:
        before = upgrade(db)
        log.info("database %s: schema up to date (was %s)", db.describe(), before or "empty")
    return db


class CentreServer:
    def __init__(self, config: CentreConfig) -> None:
        self.config = config
        self.key = keyfiles.load_private(config.signing_key_file)
        self.db = open_database(config)
        self.media = MediaStore(config.media_dir)
        self.register = Register(self.db)
        self.accounts = Accounts(self.db, self.register, config.auth)
        m = config.mqtt
        self.client = CentreClient(
            m.url,
            client_id=f"{config.centre_id}-{config.server_name}-cmd",
            root=m.root,
            ca_file=m.tls.ca_file if m.tls else None,
            cert_file=m.tls.cert_file if m.tls else None,
            key_file=m.tls.key_file if m.tls else None,
        )
        self.commander = Commander(
            self.db, self.register, self.client, Signer(self.key), config.commands
        )
        self.extractions = Extractions(
            self.db, self.register, self.commander, self.key, config.centre_id, config.extractions
        )
        self.store = make_store(config, self.db, self.register)
        self.receiver = make_receiver(config, self.store) if config.receiver.enabled else None
        self.retention = Retention(
            self.db, self.media, self.register, config.retention.max_age_days
        )
        self.executor = ThreadPoolExecutor(
            max_workers=config.database.pool_size + 16, thread_name_prefix="centre-work"
        )
        self.services = Services(
            config=config,
            db=self.db,
            media=self.media,
            register=self.register,
            accounts=self.accounts,
            commander=self.commander,
            extractions=self.extractions,
            signing_key=self.key,
            executor=self.executor,
            status=self.status,
        )
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._db_ok = True

    def status(self) -> dict[str, Any]:
        return {
            "centre": self.config.centre_id,
            "server": self.config.server_name,
            "database": self._db_ok,
            "broker": self.client.paho.is_connected(),
            "receiver": None
            if self.receiver is None
            else {
                "connected": self.receiver.connected.is_set(),
                "database": self.receiver.database_ok.is_set(),
                "stats": dict(self.receiver.stats),
            },
            "live_views": len(self.services.relay.sessions) if self.services.relay else 0,
        }

    async def start(self) -> int:
        """Start everything; returns the HTTP port (useful when the config asks for port 0)."""
        loop = asyncio.get_running_loop()
        self.services.relay = LiveRelay(
            self.commander, self.client, self.register, self.config.live, loop, self.executor
        )
        feed = EventFeed(self.db, self.executor)
        self.services.feed = feed
        feed.start()

        def stored(replies: Replies) -> None:
            if replies.kinds:
                feed.poke()

        self.store.on_stored = stored
        if self.receiver is not None:
            self.receiver.start()
        self._tasks.append(loop.create_task(self._connect_commands()))
        http = self.config.http
        tls = None
        if http.cert_file:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(http.cert_file, http.key_file)
        self.runner = web.AppRunner(make_app(self.services), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, http.listen, http.port, ssl_context=tls)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else http.port
        relay = self.services.relay
        self._every(1.0, relay.tick)
        self._every(5.0, self._housekeeping)
        self._every(self.config.retention.interval_minutes * 60, self._retention, first=30.0)
        log.info(
            "centre %s server %s: API on %s://%s:%d, database %s",
            self.config.centre_id,
            self.config.server_name,
            "https" if tls else "http",
            http.listen,
            self.port,
            self.db.describe(),
        )
        return self.port

    async def _connect_commands(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            try:
                await loop.run_in_executor(self.executor, self.client.connect, 10.0)
                log.info("commands: connected to the broker")
                return
            except CentreError as exc:
                log.warning("commands: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _every(
        self, period: float, job: Callable[[], Awaitable[None]], first: float | None = None
    ) -> None:
        async def loop_forever() -> None:
            await asyncio.sleep(period if first is None else first)
            while True:
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if Database.unavailable(exc):
                        log.warning("periodic task %s: database unavailable", job.__name__)
                    else:
                        log.exception("periodic task %s failed", job.__name__)
                await asyncio.sleep(period)

        self._tasks.append(asyncio.get_running_loop().create_task(loop_forever()))

    async def _blocking(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _housekeeping(self) -> None:
        await self._blocking(self.commander.close_idle_ptz_sessions)
        await self._blocking(self.extractions.complete_ready)
        self._db_ok = await self._blocking(self._ping)

    def _ping(self) -> bool:
        try:
            with self.db.read() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def _retention(self) -> None:
        await self._blocking(self.retention.run)
        await self._blocking(self.accounts.purge)

    async def stop(self) -> None:
        relay = self.services.relay
        if relay is not None:
            await relay.close()
        for task in self._tasks:
            task.cancel()
        if self.services.feed is not None:
            await self.services.feed.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.receiver is not None:
            await self._blocking(self.receiver.stop)
        self.client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.db.dispose()

    async def serve(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
        port = await self.start()
        if ready is not None:
            ready(port)
        try:
            await stop.wait()
        finally:
            await self.stop()


class ServerThread:
    """A server on an event loop of its own thread: for the demo, the tests and the benches."""

    def __init__(self, config: CentreConfig) -> None:
        self.config = config
        self.server: CentreServer | None = None
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="centre-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.server = CentreServer(self.config)

            def ready(port: int) -> None:
                self.port = port
                self._ready.set()

            await self.server.serve(self._stop, ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("centre server did not start in time")
        if self._error is not None:
            raise RuntimeError(f"centre server failed to start: {self._error}") from self._error
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def wait_receiver(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server and self.server.receiver and self.server.receiver.connected.is_set():
                return True
            time.sleep(0.05)
        return False
