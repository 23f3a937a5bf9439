"""`guetteur demo`: a whole gateway and its centre on a laptop, with nothing to configure.

Starts a private Mosquitto on a free loopback port, the centre server (SQLite in a temporary
folder, a fresh signing key, an operator account), one `test:` camera whose generated scene has a
person walking across every few seconds and the real agent pipeline; then, as the operators'
console would, logs in to the server and prints every event its live feed pushes, with the size
of its snapshot fetched through the API. Everything the gateway sends goes through its durable
outbox and the centre's receiver, as in production.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from guetteur.config import validate_config
from guetteur.dev.broker import BrokerError, PrivateBroker

DEMO_CAMERA = "test:walk?start=3&end=6&duration=10"


def _centre(workdir: Path, broker_url: str) -> tuple[Any, str]:
    """The centre server on a thread, and the password of its operator ``demo``."""
    from guetteur import keyfiles
    from guetteur.centre.accounts import Accounts
    from guetteur.centre.config import validate_centre_config
    from guetteur.centre.db.engine import Database
    from guetteur.centre.db.migrate import upgrade
    from guetteur.centre.register import Register
    from guetteur.centre.server import ServerThread

    folder = workdir / "centre"
    folder.mkdir()
    key = keyfiles.generate(folder / "signing.pem")
    # the gateway trusts the centre's public key, as provisioning makes a real one do
    (folder / "signing.pub").write_text(keyfiles.public_pem(key.public_key()).decode())
    config = validate_centre_config(
        {
            "centre_id": "demo-centre",
            "server_id": "demo",
            "database": {"url": f"sqlite:///{folder / 'centre.db'}"},
            "media_dir": str(folder / "media"),
            "signing_key_file": str(folder / "signing.pem"),
            "mqtt": {"url": broker_url},
            "http": {"listen": "127.0.0.1", "port": 0},
            "extractions": {"dir": str(folder / "extractions")},
        },
        "demo centre",
    )
    password = secrets.token_urlsafe(12)
    db = Database(config.database.url, pool_size=1)
    upgrade(db)
    Accounts(db, Register(db), config.auth).add("demo", "operator", password, "Demo", "demo")
    db.dispose()
    return ServerThread(config).start(), password


async def _watch(url: str, password: str, deadline: float, stop: threading.Event) -> int:
    """Log in as the console would and print what the live feed pushes; returns the count."""
    from guetteur.centre.tools.apiclient import ApiClient

    events = 0
    async with ApiClient(url) as api:
        await api.login("demo", password)
        print("demo: operator demo logged in to the centre server", flush=True)
        async with api.session.get(
            url + "/api/events/stream", headers={"Authorization": f"Bearer {api.token}"}
        ) as feed:
            kind = ""
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    raw = await asyncio.wait_for(feed.content.readline(), 0.5)
                except TimeoutError:
                    continue
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    item = json.loads(line[6:])
                    if kind == "event":
                        events += 1
                        print(
                            f"centre: event {item['type']:<6} id={item['event_id']} "
                            f"camera={item['camera']} start={item['start']} score={item['score']}",
                            flush=True,
                        )
                    elif kind == "snapshot" and item.get("event_id"):
                        jpeg = await api.download(item["url"])
                        print(
                            f"centre: snapshot for event {item['event_id']}: {len(jpeg)} bytes "
                            "JPEG (fetched through the API)",
                            flush=True,
                        )
                    elif kind == "camera":
                        print(f"centre: camera {item['camera']} {item['state']}", flush=True)
    return events


def run_demo(seconds: float, stop: threading.Event) -> int:
    from guetteur.runtime.gateway import Gateway

    workdir = Path(tempfile.mkdtemp(prefix="guetteur-demo-"))
    try:
        broker = PrivateBroker(workdir / "broker", persistence=False)
        broker.start()
    except BrokerError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"demo: private broker on {broker.url}, data in {workdir}")
    try:
        centre, password = _centre(workdir, broker.url)
    except Exception as exc:
        print(f"demo: the centre server did not start: {exc}", file=sys.stderr)
        broker.stop()
        return 2
    print(f"demo: centre server on {centre.url} (SQLite, account demo)", flush=True)
    config = validate_config(
        {
            "gateway_id": "demo-gw",
            "site": "demo",
            "data_dir": str(workdir / "data"),
            "mqtt": {"url": broker.url},
            "cameras": [{"id": "demo-cam", "url": DEMO_CAMERA}],
            "events": {"clips": False},  # a 30 s demo: events and snapshots only
            "commands": {"trusted_keys": [str(workdir / "centre" / "signing.pub")]},
        },
        "demo config",
    )
    gateway = Gateway(config)
    count = 0
    try:
        gateway.start()
        print(
            f"demo: camera demo-cam ({DEMO_CAMERA}): a person walks by every 10 s; "
            f"running {seconds:.0f} s (Ctrl-C stops)",
            flush=True,
        )
        count = asyncio.run(_watch(centre.url, password, time.monotonic() + seconds, stop))
    except Exception as exc:
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        gateway.stop()
        centre.stop()
        broker.stop()
    if count == 0:
        print("demo: no event reached the centre: check the log lines above", file=sys.stderr)
        return 1
    print(f"demo: {count} event message(s) received through the centre server's API")
    return 0
