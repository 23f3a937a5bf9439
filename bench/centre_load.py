"""A fleet's worth of load on the centre: Grand Nancy's scale against 1 and 2 servers sharing
PostgreSQL, with a city-wide outage.

    .venv/bin/python bench/centre_load.py [--servers 1 2] [--steady 60] [--outage 120]

Simulated gateways, not full agents: 40 lightweight publishers speaking the real protocol
(outbox item ids, per-camera ``epoch``/``cseq`` user properties, snapshots as JPEG-sized
payloads, retained status and Last Will, retransmission until the centre's end-to-end ack, and
``resync``), 6 cameras each (240). A busy evening: each camera has an event every
``--event-interval`` s on average (Poisson), each event a start, an update 4 s later and an end
8 s later, with a 30 kB snapshot at the start and at the update.

Per configuration (a fresh PostgreSQL database, a fresh Mosquitto, N ``guetteur centre serve``
processes sharing them, one SSE client per server as a console would be):

1. steady phase: p95 from a gateway's publish to the event being visible through the API (the
   server-sent events feed), events/s stored;
2. city-wide outage: every gateway's link drops for ``--outage`` s while events keep coming;
   then all 40 reconnect and drain at once, with jitter (reconnect after a random 0..15 s,
   ``--drain-kbps`` per gateway, like a 4G uplink): time until every backlog is acknowledged,
   events/s stored meanwhile;
3. nothing lost, nothing duplicated: the database holds every generated event and snapshot
   exactly once; database size per day extrapolated from its growth.

The limit measured in the same run: raw INSERTs of event-sized rows into the same PostgreSQL
(batches of 500, one connection), events/s — the stored rate is printed as a share of it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402

from guetteur import keyfiles  # noqa: E402
from guetteur.centre.accounts import Accounts  # noqa: E402
from guetteur.centre.db.engine import Database  # noqa: E402
from guetteur.centre.db.migrate import upgrade  # noqa: E402
from guetteur.centre.db.schema import events, snapshots  # noqa: E402
from guetteur.centre.register import Register  # noqa: E402
from guetteur.dev.broker import PrivateBroker, free_port, wait_port  # noqa: E402
from guetteur.timeutil import iso_ms  # noqa: E402
from guetteur.uplink import protocol  # noqa: E402
from guetteur.uplink.mqttutil import new_client, publish_properties  # noqa: E402

ROOT = protocol.DEFAULT_ROOT
SNAPSHOT_BYTES = 30_000
PASSWORD = "bench password 1"


# -- a simulated gateway -------------------------------------------------------------------------


@dataclass
class Item:
    topic: str
    payload: bytes
    props: dict[str, str]
    content_type: str
    kind: str
    sent: float = 0.0
    tries: int = 0


@dataclass
class SimGateway:
    """The protocol of a gateway's link and outbox, without cameras, disk or analysis."""

    gw: str
    url: tuple[str, int]
    drain_bytes_per_s: float
    retry_s: float = 10.0
    inflight: int = 256
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    cseq: dict[str, int] = field(default_factory=dict)
    queue: OrderedDict[str, Item] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: mqtt.Client | None = None
    online: bool = False
    tokens: float = 0.0
    last_fill: float = field(default_factory=time.monotonic)
    published: dict[str, float] = field(default_factory=dict)  # item id -> first publish time

    def connect(self) -> None:
        client = new_client(f"guetteur-{self.gw}")
        client.will_set(f"{ROOT}/{self.gw}/status", protocol.dumps(
            {"state": "offline", "gateway": self.gw, "reason": "link lost"}), 1, True)  # fmt: skip
        client.on_connect = self._on_connect
        client.on_message = self._on_ack
        client.connect(*self.url, keepalive=30)
        client.loop_start()
        self.client = client

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(f"{ROOT}/{self.gw}/ack", qos=1)
        client.publish(f"{ROOT}/{self.gw}/status", protocol.dumps(
            {"state": "online", "gateway": self.gw, "time": iso_ms()}), 1, True)  # fmt: skip
        with self.lock:
            for item in self.queue.values():
                item.sent = 0.0  # in flight before: a fresh period
        self.online = True

    def _on_ack(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = protocol.parse_ack(bytes(msg.payload))
        except protocol.MessageError:
            return
        with self.lock:
            for i in ack.ids:
                self.queue.pop(i, None)
            for i in ack.resend:
                if i in self.queue:
                    self.queue[i].sent = 0.0
            if ack.resync:
                for item in self.queue.values():
                    item.sent = 0.0

    def drop_link(self) -> None:
        """The outage: the TCP connection dies (no clean disconnect, the broker sends the LWT)."""
        self.online = False
        if self.client is not None:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()
            self.client = None

    def submit_event(self, camera: str, body: dict[str, Any]) -> None:
        seq = self.cseq.get(camera, 0) + 1
        self.cseq[camera] = seq
        props = {protocol.PROP_ITEM_ID: body["id"], protocol.PROP_EPOCH: self.epoch,
                 protocol.PROP_CSEQ: str(seq)}  # fmt: skip
        topic = f"{ROOT}/{self.gw}/cam/{camera}/event"
        with self.lock:
            self.queue[body["id"]] = Item(
                topic, protocol.dumps(body), props, "application/json", "event"
            )

    def submit_snapshot(self, camera: str, jpeg: bytes, item_id: str, event_id: str) -> None:
        props = {protocol.PROP_ITEM_ID: item_id, "event_id": event_id, "time": iso_ms()}
        topic = f"{ROOT}/{self.gw}/cam/{camera}/snapshot"
        with self.lock:
            self.queue[item_id] = Item(topic, jpeg, props, "image/jpeg", "snapshot")

    def pending(self) -> set[str]:
        with self.lock:
            return set(self.queue)

    def pump(self, now: float) -> None:
        """Publish what is due: new items within the in-flight window and the pacing, and
        retransmissions of what has not been acknowledged after retry_s."""
        if not self.online or self.client is None:
            return
        self.tokens = min(
            self.drain_bytes_per_s, self.tokens + (now - self.last_fill) * self.drain_bytes_per_s
        )
        self.last_fill = now
        with self.lock:
            in_flight = sum(
                1 for i in self.queue.values() if i.sent and now - i.sent < self.retry_s
            )
            due = [
                (k, i)
                for k, i in self.queue.items()
                if not i.sent or now - i.sent >= self.retry_s * min(8, 2 ** (i.tries - 1))
            ]
        for item_id, item in due:
            if in_flight >= self.inflight or self.tokens < len(item.payload):
                break
            self.tokens -= len(item.payload)
            props = publish_properties(item.content_type, item.props)
            self.client.publish(item.topic, item.payload, qos=1, properties=props)
            item.sent, item.tries = now, item.tries + 1
            in_flight += 1
            self.published.setdefault(item_id, time.time())

    def backlog(self) -> int:
        with self.lock:
            return len(self.queue)


class Scene:
    """Events of every camera: Poisson starts, each with an update and an end."""

    def __init__(
        self, gateways: list[SimGateway], cameras: int, interval_s: float, seed: int = 1
    ) -> None:
        self.gateways = gateways
        self.cameras = cameras
        self.interval = interval_s
        self.rng = random.Random(seed)
        self.heap: list[tuple[float, int, str, str, int, str]] = []
        self.counter = 0
        self.generated = {"event": 0, "snapshot": 0}
        now = time.monotonic()
        for g, _gw in enumerate(gateways):
            for c in range(cameras):
                self._schedule_start(now + self.rng.expovariate(1 / interval_s), g, c)

    def _push(self, at: float, g: int, cam: str, seq: int, event_id: str) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (at, self.counter, cam, event_id, seq, str(g)))

    def _schedule_start(self, at: float, g: int, c: int) -> None:
        self._push(at, g, f"c{g:02d}-{c}", 0, uuid.uuid4().hex)

    def run_due(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            at, _n, cam, event_id, seq, g_text = heapq.heappop(self.heap)
            g = int(g_text)
            gw = self.gateways[g]
            kind = ("start", "update", "end")[seq]
            body = {"id": f"{event_id}:{seq}", "event_id": event_id, "seq": seq, "type": kind,
                    "gateway": gw.gw, "camera": cam, "start": iso_ms(), "end": None,
                    "time": iso_ms(), "boxes": [[0.1, 0.1, 0.3, 0.5]],
                    "labels": [{"label": "person", "score": 0.8}], "score": 0.5,
                    "clock_synced": True}  # fmt: skip
            gw.submit_event(cam, body)
            self.generated["event"] += 1
            if seq < 2:
                jpeg = b"\xff\xd8" + os.urandom(SNAPSHOT_BYTES - 2)
                gw.submit_snapshot(cam, jpeg, f"{event_id}:{seq}:snap", event_id)
                self.generated["snapshot"] += 1
                self._push(at + 4.0, g, cam, seq + 1, event_id)
            else:
                c = int(cam.rsplit("-", 1)[1])
                self._schedule_start(at + self.rng.expovariate(1 / self.interval), g, c)


# -- the centre: PostgreSQL, a broker, N servers -------------------------------------------------


def start_servers(
    n: int, work: Path, broker: PrivateBroker, url: str
) -> list[tuple[subprocess.Popen[str], int]]:
    key = work / "signing.pem"
    keyfiles.generate(key)
    procs = []
    for i in range(n):
        port = free_port()
        config = work / f"centre-{i}.yaml"
        config.write_text(yaml.safe_dump({
            "centre_id": "bench", "server_id": f"srv{i}",
            "database": {"url": url, "pool_size": 10}, "media_dir": str(work / "media"),
            "signing_key_file": str(key), "mqtt": {"url": broker.url, "client_id": f"rx-srv{i}"},
            "http": {"listen": "127.0.0.1", "port": port}, "log_level": "WARNING",
            "extractions": {"dir": str(work / "extractions")},
        }))  # fmt: skip
        log = open(work / f"server-{i}.log", "w")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen([sys.executable, "-m", "guetteur", "centre", "serve", "-c", str(config)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
        wait_port(port, 30)
        procs.append((proc, port))
    return procs


class FeedClient(threading.Thread):
    """A console's SSE connection to one server: when each event became visible."""

    def __init__(self, port: int, token: str, seen: dict[str, float], lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.seen, self.lock = port, token, seen, lock

    def run(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/events/stream")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=3600) as resp:
                kind = ""
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "event":
                        item = json.loads(line[6:])
                        with self.lock:
                            self.seen.setdefault(f"{item['gateway']}/{item['id']}", time.time())
        except OSError:
            return


def login(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/login",
                                 json.dumps({"username": "viewer", "password": PASSWORD}).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["token"])


def raw_insert_rate(url: str, rows: int = 20000) -> float:
    """Event-sized rows INSERTed in batches of 500 on one connection: the database's own pace."""
    db = Database(url, pool_size=1)
    body = "x" * 420
    with db.write() as conn:
        conn.execute(text("CREATE TABLE raw_limit (gateway text, item_id text, camera text, "
                          "received text, message text, UNIQUE (gateway, item_id))"))  # fmt: skip
    t0 = time.perf_counter()
    for start in range(0, rows, 500):
        with db.write() as conn:
            conn.execute(text("INSERT INTO raw_limit VALUES (:g, :i, :c, :r, :m) ON CONFLICT DO NOTHING"),
                         [{"g": "gw", "i": f"e{n}", "c": "cam", "r": iso_ms(), "m": body}
                          for n in range(start, start + 500)])  # fmt: skip
    rate = rows / (time.perf_counter() - t0)
    with db.write() as conn:
        conn.execute(text("DROP TABLE raw_limit"))
    db.dispose()
    return rate


def stored_counts(db: Database) -> tuple[int, int, int, int]:
    with db.read() as conn:
        ev = conn.execute(select(func.count()).select_from(events)).scalar_one()
        ev_distinct = conn.execute(
            select(func.count(func.distinct(events.c.gateway + ":" + events.c.item_id)))
        ).scalar_one()
        sn = conn.execute(select(func.count()).select_from(snapshots)).scalar_one()
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    return int(ev), int(ev_distinct), int(sn), int(size)


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_config(n_servers: int, args: argparse.Namespace, pg: PostgresServer) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"centre-load-{n_servers}-"))
    url = pg.new_database()
    limit = raw_insert_rate(url)
    db = Database(url, pool_size=2)
    upgrade(db)
    Accounts(db, Register(db)).add("viewer", "viewer", PASSWORD, None, "bench")
    broker = PrivateBroker(work / "broker", persistence=True)
    broker.start()
    servers = start_servers(n_servers, work, broker, url)
    seen: dict[str, float] = {}
    lock = threading.Lock()
    for _proc, port in servers:
        FeedClient(port, login(port), seen, lock).start()
    rng = random.Random(7)
    gws = [
        SimGateway(f"gw{g:02d}", (broker.host, broker.port), args.drain_kbps * 1000)
        for g in range(args.gateways)
    ]
    for gw in gws:
        gw.connect()
    scene = Scene(gws, args.cameras, args.event_interval)
    stop = threading.Event()

    def drive() -> None:
        while not stop.is_set():
            now = time.monotonic()
            scene.run_due(now)
            for gw in gws:
                gw.pump(now)
            time.sleep(0.02)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    result: dict[str, Any] = {"servers": n_servers, "raw_insert_per_s": limit}
    _, _, _, size0 = stored_counts(db)
    time.sleep(args.warmup)
    t_steady = time.time()
    ev0 = stored_counts(db)[0]
    time.sleep(args.steady)
    ev1 = stored_counts(db)[0]
    result["steady_events_per_s"] = (ev1 - ev0) / args.steady
    with lock:
        pairs = [(k, t) for k, t in seen.items()]
    lat = []
    for key, t_seen in pairs:
        gw_id, item = key.split("/", 1)
        t_pub = gws[int(gw_id[2:])].published.get(item)
        if t_pub and t_pub >= t_steady:
            lat.append(t_seen - t_pub)
    result["visible_p50_ms"] = 1000 * p(lat, 0.5)
    result["visible_p95_ms"] = 1000 * p(lat, 0.95)
    result["visible_n"] = len(lat)

    # the city-wide outage
    for gw in gws:
        gw.drop_link()
    time.sleep(args.outage)
    owed = {gw.gw: gw.pending() for gw in gws}  # the outage's backlog, to be acknowledged
    result["backlog_items"] = sum(len(x) for x in owed.values())
    ev_before = stored_counts(db)[0]
    t_back = time.monotonic()
    timers = [threading.Timer(rng.uniform(0, args.jitter), gw.connect) for gw in gws]
    for t in timers:
        t.start()
    peak, last, last_t = 0.0, ev_before, time.monotonic()
    deadline = time.monotonic() + args.drain_timeout
    # drained: every item of the outage's backlog acknowledged (new events keep coming meanwhile)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        ev = stored_counts(db)[0]
        now = time.monotonic()
        peak = max(peak, (ev - last) / (now - last_t))
        last, last_t = ev, now
        if not any(owed[gw.gw] & gw.pending() for gw in gws):
            break
    result["drain_s"] = time.monotonic() - t_back
    result["drain_peak_events_per_s"] = peak
    # let the last items through, then stop generating and wait for every ack
    stop.set()
    driver.join(5)
    end = time.monotonic() + args.settle
    while time.monotonic() < end and sum(gw.backlog() for gw in gws) > 0:
        now = time.monotonic()
        for gw in gws:
            gw.pump(now)
        time.sleep(0.1)
    ev, ev_distinct, sn, size1 = stored_counts(db)
    result["work"] = str(work)
    result |= {
        "generated_events": scene.generated["event"], "stored_events": ev,
        "distinct_events": ev_distinct, "generated_snapshots": scene.generated["snapshot"],
        "stored_snapshots": sn, "left_in_outboxes": sum(gw.backlog() for gw in gws),
        "db_bytes_per_event_msg": (size1 - size0) / max(ev, 1),
    }  # fmt: skip
    per_day_msgs = args.gateways * args.cameras * 86400 / args.event_interval * 3
    result["db_mb_per_day"] = result["db_bytes_per_event_msg"] * per_day_msgs / 1e6
    result["media_gb_per_day"] = per_day_msgs * 2 / 3 * SNAPSHOT_BYTES / 1e9
    for gw in gws:
        gw.drop_link()
    for proc, _port in servers:
        proc.send_signal(signal.SIGTERM)
    for proc, _port in servers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    broker.stop()
    db.dispose()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--gateways", type=int, default=40)
    ap.add_argument("--cameras", type=int, default=6, help="per gateway")
    ap.add_argument(
        "--event-interval", type=float, default=60.0, help="mean s between events of a camera"
    )
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--steady", type=float, default=60.0)
    ap.add_argument("--outage", type=float, default=120.0)
    ap.add_argument("--jitter", type=float, default=15.0, help="reconnects spread over 0..S s")
    ap.add_argument(
        "--drain-kbps", type=float, default=256.0, help="kB/s per gateway while draining"
    )
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    ap.add_argument(
        "--settle",
        type=float,
        default=300.0,
        help="after the run, wait this long for the last acks",
    )
    args = ap.parse_args()
    pg = PostgresServer(durable=True)
    pg.start()
    try:
        results = [run_config(n, args, pg) for n in args.servers]
    finally:
        pg.remove()
    for r in results:
        lost = (
            r["generated_events"]
            + r["generated_snapshots"]
            - r["stored_events"]
            - r["stored_snapshots"]
            - r["left_in_outboxes"]
        )
        duplicated = r["stored_events"] - r["distinct_events"]
        print(f"\n== {r['servers']} server(s) sharing PostgreSQL ==")
        print(f"raw INSERT limit (same run): {r['raw_insert_per_s']:.0f} rows/s")
        print(f"steady: {r['steady_events_per_s']:.1f} event msgs/s stored; publish → visible in the API "
              f"p50 {r['visible_p50_ms']:.0f} ms, p95 {r['visible_p95_ms']:.0f} ms (n={r['visible_n']})")  # fmt: skip
        print(f"outage {args.outage:.0f} s: backlog {r['backlog_items']} items; drained in {r['drain_s']:.1f} s; "
              f"peak {r['drain_peak_events_per_s']:.0f} events/s stored "
              f"({100 * r['drain_peak_events_per_s'] / r['raw_insert_per_s']:.1f} % of the raw limit)")  # fmt: skip
        print(f"events generated {r['generated_events']}, stored {r['stored_events']} "
              f"(distinct {r['distinct_events']}); snapshots {r['generated_snapshots']} / "
              f"{r['stored_snapshots']}; still in the gateways' outboxes (not yet acknowledged) "
              f"{r['left_in_outboxes']}; lost {lost}, duplicated {duplicated}")  # fmt: skip
        print(f"database: {r['db_bytes_per_event_msg']:.0f} B per event message → "
              f"{r['db_mb_per_day']:.0f} MB/day at this rate all day; snapshots {r['media_gb_per_day']:.1f} GB/day")  # fmt: skip
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
