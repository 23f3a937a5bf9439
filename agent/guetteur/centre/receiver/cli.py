"""`guetteur centre receive`: the centre's durable store of events, snapshots, clips and audit
records, acknowledging each to its gateway once stored for good — the centre server without its
API and command path (the same ``Receiver`` and ``Store``).

    guetteur centre receive -c /etc/guetteur-centre/centre.yaml    # the server's database
    guetteur centre receive -b mqtts://broker:8883 --out /srv/csu   # embedded: DIR/receiver.db
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from guetteur.centre.receiver.mqtt import DEFAULT_GROUP, Receiver
from guetteur.uplink import protocol

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help="centre.yaml: store into the centre's database and media tree (its mqtt section "
        "gives the broker); or -b and --out",
    )
    parser.add_argument(
        "-b", "--broker", help="broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (no config)"
    )
    parser.add_argument("--out", help="directory for receiver.db, snapshots, clips (no config)")
    parser.add_argument("--root", default=protocol.DEFAULT_ROOT, help="topic prefix")
    parser.add_argument(
        "--share-group",
        default=DEFAULT_GROUP,
        help="shared-subscription group: receivers of one group split the load "
        "(default %(default)s; '' for a plain subscription)",
    )
    parser.add_argument(
        "--client-id",
        help="MQTT client id (stable across restarts: the "
        "broker keeps this receiver's session); default derived from host and --out",
    )
    parser.add_argument("--ca", help="CA file verifying the broker (mqtts://)")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client certificate key")


def _receiver(args: argparse.Namespace) -> Receiver:
    if args.config:
        from guetteur.centre.admin.common import load
        from guetteur.centre.register import Register
        from guetteur.centre.server import make_receiver, make_store, open_database

        config = load(args)
        db = open_database(config)
        return make_receiver(config, make_store(config, db, Register(db)))
    if not args.broker or not args.out:
        raise ValueError("give -c centre.yaml, or both -b BROKER and --out DIR")
    return Receiver(
        args.broker,
        args.out,
        root=args.root,
        share_group=args.share_group or None,
        client_id=args.client_id,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
    )


def run(args: argparse.Namespace) -> int:
    try:
        receiver = _receiver(args)
    except Exception as exc:  # a config, URL or database problem: one sentence, exit 2
        print(f"error: {exc or type(exc).__name__}", flush=True)
        return 2
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    receiver.start()
    log.info(
        "receiver: storing into %s; subscriptions: %s",
        receiver.store.db.describe(),
        ", ".join(receiver.topics()),
    )
    if not receiver.wait_connected(10.0):
        log.warning("receiver: broker %s not reachable yet; still trying", receiver.address.host)
    while not stop.wait(1.0):
        pass
    receiver.stop()
    stats = ", ".join(f"{k}={v}" for k, v in sorted(receiver.stats.items()))
    print(f"receiver stopped: {stats or 'nothing received'}", flush=True)
    return 0
