"""A real centre server for tests: a config in a temporary folder (a fresh signing key, a free
port), the server on its own event-loop thread, accounts made in its database, and a small
synchronous HTTP client (urllib) speaking its API with a bearer token.

Fixture ``centre_server`` is a factory::

    centre = centre_server(broker)                          # SQLite, server id srv1
    centre = centre_server(broker, database_url=url, server_id="srv2", media=shared_dir)
    op = centre.login("op1")                                # users op1 (operator), sup1...
    op.ok("POST", "/api/live", {"gateway": "gw1", "camera": "cam1"})
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guetteur import keyfiles
from guetteur.centre.accounts import Accounts
from guetteur.centre.config import CentreConfig, validate_centre_config
from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import upgrade
from guetteur.centre.register import Register
from guetteur.centre.server import ServerThread
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.signing import CentreKey

PASSWORD = "correct horse battery"
USERS = {
    "view1": "viewer",
    "op1": "operator",
    "op2": "operator",
    "sup1": "supervisor",
    "aud1": "auditor",
    "adm1": "admin",
}


class Api:
    """A synchronous client of the centre's API (tests only)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        **params: Any,
    ) -> tuple[int, bytes, dict[str, str]]:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> tuple[int, dict[str, Any]]:
        status, raw, _ = self.call(method, path, body, **params)
        return status, json.loads(raw)

    def ok(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        status, data = self.json(method, path, body, **params)
        assert data.get("ok"), (status, data)
        return data

    def error(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> tuple[int, str]:
        status, data = self.json(method, path, body, **params)
        assert not data.get("ok"), (status, data)
        return status, str(data["error"]["code"])


@dataclass
class Centre:
    config: CentreConfig
    thread: ServerThread
    folder: Path

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def key_file(self) -> Path:
        return Path(self.config.signing_key_file)

    def login(self, user: str, password: str = PASSWORD) -> Api:
        api = Api(self.url)
        data = api.ok("POST", "/api/login", {"username": user, "password": password})
        api.token = data["token"]
        return api

    def anonymous(self) -> Api:
        return Api(self.url)

    def stop(self) -> None:
        self.thread.stop()


def make_config(
    folder: Path,
    broker_url: str,
    database_url: str | None = None,
    server_id: str = "srv1",
    media: Path | None = None,
    key_file: Path | None = None,
    **sections: Any,
) -> CentreConfig:
    folder.mkdir(parents=True, exist_ok=True)
    if key_file is None:
        key_file = folder / "signing.pem"
        if not key_file.exists():
            keyfiles.generate(key_file)
    raw: dict[str, Any] = {
        "centre_id": "csu-test",
        "server_id": server_id,
        "database": {"url": database_url or f"sqlite:///{folder / 'centre.db'}", "pool_size": 4},
        "media_dir": str(media or folder / "media"),
        "signing_key_file": str(key_file),
        "mqtt": {"url": broker_url, "client_id": f"rx-{server_id}"},
        "http": {"listen": "127.0.0.1", "port": 0},
        "extractions": {"dir": str(folder / "extractions")},
        **sections,
    }
    return validate_centre_config(raw, "test centre")


def add_users(config: CentreConfig, users: dict[str, str] | None = None) -> None:
    db = Database(config.database.url, pool_size=1)
    upgrade(db)
    accounts = Accounts(db, Register(db), config.auth)
    existing = {row["username"] for row in accounts.list()}
    for name, role in (users or USERS).items():
        if name not in existing:
            accounts.add(name, role, PASSWORD, name.upper(), "test-setup")
    db.dispose()


@pytest.fixture
def centre_server(tmp_path: Path, centre_key: CentreKey) -> Iterator[Callable[..., Centre]]:
    """Servers signing with ``centre_key``, the key ``real_gateway``'s gateways trust."""
    started: list[Centre] = []

    def start(broker: MosquittoBroker, **kw: Any) -> Centre:
        folder = tmp_path / f"centre-{kw.get('server_id', 'srv1')}-{len(started)}"
        kw.setdefault("key_file", centre_key.private_path)
        config = make_config(folder, broker.url, **kw)
        add_users(config)
        centre = Centre(config, ServerThread(config).start(), folder)
        started.append(centre)
        assert centre.thread.wait_receiver(10), "the centre's receiver did not connect"
        return centre

    yield start
    for centre in started:
        centre.stop()


def gateway_config(
    folder: Path, broker_url: str, gateway_id: str = "gw1", ptz_port: str | None = None, **over: Any
) -> Any:
    """A real gateway's config: one generated camera (a person walks by), 1 s GOP, optional
    Pelco-D dome on a pty."""
    from guetteur.config import validate_config

    camera: dict[str, Any] = {"id": "cam1", "url": "test:walk?start=2&end=4&duration=8&gop=1"}
    if ptz_port:
        camera["ptz"] = {"protocol": "pelco-d", "serial_port": ptz_port}
    raw: dict[str, Any] = {
        "gateway_id": gateway_id,
        "data_dir": str(folder),
        "mqtt": {"url": broker_url},
        "cameras": [camera],
        "recording": {"segment_s": 2},
        "events": {"pre_roll_s": 1, "post_roll_s": 1, "end_quiet_s": 1.0},
        "live": {"min_lease_s": 1.0},
        **over,
    }
    return validate_config(raw, "test gateway")


@pytest.fixture
def real_gateway(tmp_path: Path, centre_key: CentreKey) -> Iterator[Callable[..., Any]]:
    """Factory: a started runtime Gateway (the agent itself) for ``gateway_config(...)``,
    trusting the centre servers' signing key."""
    from guetteur.runtime.gateway import Gateway

    started: list[Any] = []

    def start(broker: MosquittoBroker, **kw: Any) -> Any:
        kw.setdefault("commands", centre_key.commands_config())
        gw = Gateway(gateway_config(tmp_path / f"gw-{len(started)}", broker.url, **kw))
        gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def watch_live(base: str, token: str, session: str, seconds: float) -> list[bytes | str]:
    """What a browser's WebSocket receives from a live view in ``seconds``."""
    import asyncio

    import aiohttp

    async def run() -> list[bytes | str]:
        got: list[bytes | str] = []
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                "ws" + base[4:] + f"/api/live/{session}/ws",
                headers={"Authorization": f"Bearer {token}"},
            ) as ws,
        ):
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                try:
                    msg = await ws.receive(timeout=max(0.05, end - loop.time()))
                except TimeoutError:
                    break
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.append(bytes(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    got.append(str(msg.data))
                else:
                    break
        return got

    return asyncio.run(run())


def read_sse(
    base: str, token: str, kinds: set[str], count: int, timeout: float
) -> list[dict[str, Any]]:
    """The first ``count`` server-sent items of ``kinds`` (e.g. {"event"}) within ``timeout``."""
    import time

    req = urllib.request.Request(base + "/api/events/stream")
    req.add_header("Authorization", f"Bearer {token}")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        kind = ""
        while len(got) < count and time.monotonic() < deadline:
            try:
                line = resp.readline().decode().rstrip("\n")
            except TimeoutError:
                break
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in kinds:
                got.append(json.loads(line[6:]))
    return got
