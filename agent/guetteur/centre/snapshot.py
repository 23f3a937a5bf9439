"""`guetteur centre snapshot`: ask a gateway for a picture of a camera now, and save it.

    guetteur centre snapshot -b mqtt://broker:1883 -g gw1 --camera cam1               # ask only
    guetteur centre snapshot -b mqtt://broker:1883 -g gw1 --camera cam1 -o cam1.jpg   # and save
    guetteur centre snapshot -b mqtt://broker:1883 -g gw1 --camera cam1 -o - | display -

The gateway replies at once and publishes the JPEG on ``cam/{cam}/snapshot`` like every snapshot
(through its outbox, for the centre receiver to store). With ``-o`` the tool subscribes to that
topic before asking, so the picture cannot slip past, and keeps the one whose item id the reply
names. It acknowledges nothing: acknowledging is the receiver's job.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from guetteur.centre.client import (
    CentreError,
    add_connection_arguments,
    add_gateway_argument,
    add_signing_arguments,
    client_from_args,
)
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import user_properties
from guetteur.uplink.protocol import Topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    add_signing_arguments(parser)
    add_gateway_argument(parser)
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE|-",
        help="write the JPEG to FILE (- for stdout); without it, only ask for the snapshot",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the reply, then for the picture (default %(default)s)",
    )


class SnapshotCatcher:
    """Keeps the JPEGs published on a camera's snapshot topic, by item id, until one is wanted."""

    def __init__(self) -> None:
        self._pictures: dict[str, bytes] = {}
        self._arrived = threading.Condition()

    def on_message(self, msg: mqtt.MQTTMessage) -> None:  # network thread
        item_id = user_properties(msg).get(protocol.PROP_ITEM_ID, "")
        with self._arrived:
            self._pictures[item_id] = bytes(msg.payload)
            self._arrived.notify_all()

    def wait(self, item_id: str, timeout: float) -> bytes | None:
        with self._arrived:
            self._arrived.wait_for(lambda: item_id in self._pictures, timeout)
            return self._pictures.get(item_id)


def run(args: argparse.Namespace) -> int:
    # with -o -, stdout carries the picture: every sentence goes to stderr
    say = sys.stderr if args.output == "-" else sys.stdout
    try:
        client = client_from_args(args)
    except ValueError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 2
    catcher = SnapshotCatcher()
    if args.output is not None:
        client.subscribe(Topics(args.root, args.gateway).snapshot(args.camera), catcher.on_message)
    try:
        client.connect()
        reply = client.request(args.gateway, "snapshot", {"camera": args.camera}, args.timeout)
        if not reply.get("ok"):
            err = reply.get("error", {})
            print(f"snapshot refused: {err.get('code')}: {err.get('message')}", file=sys.stderr)
            return 1
        print(
            f"snapshot {reply['snapshot_id']} at {reply['time']} ({reply['bytes']} bytes) "
            f"published on cam/{args.camera}/snapshot",
            file=say,
        )
        if args.output is None:
            return 0
        jpeg = catcher.wait(reply["snapshot_id"], args.timeout)
    except CentreError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if jpeg is None:
        print(
            f"snapshot: {reply['snapshot_id']} did not arrive within {args.timeout:.0f} s "
            f"(is the gateway's link to the broker up?)",
            file=sys.stderr,
        )
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(jpeg)
        sys.stdout.buffer.flush()
        return 0
    try:
        Path(args.output).write_bytes(jpeg)
    except OSError as exc:
        print(f"snapshot: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    print(f"written to {args.output}", file=say)
    return 0
