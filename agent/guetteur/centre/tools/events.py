"""`guetteur centre events`: print events (and their snapshots) as a centre receives them.

A viewer, not the durable store: it de-duplicates by id in memory and acknowledges nothing unless
``--ack`` is given (then it plays the centre for a demo whose gateway runs the outbox; without any
acknowledgement the outbox would keep re-sending). Works with the direct publisher (no ack needed)
and with the outbox alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TextIO

import paho.mqtt.client as mqtt

from guetteur.centre.client import (
    LOCAL_BROKER,
    CentreError,
    add_connection_arguments,
    add_gateway_argument,
    client_from_args,
)
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import user_properties


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, broker=LOCAL_BROKER)
    add_gateway_argument(parser, default="+", help="only this gateway; + for every gateway")
    parser.add_argument(
        "--count",
        "-n",
        type=int,
        default=0,
        help="exit 0 after N distinct event messages (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="with --count: exit 1 if N events have not arrived after S seconds",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--ack",
        action="store_true",
        help="acknowledge what is printed, end to end (lets a gateway's outbox "
        "drain when no receiver runs; do not use beside `centre receive`)",
    )


class EventPrinter:
    """Turns event and snapshot messages into lines; pure apart from the output stream."""

    def __init__(self, out: TextIO, as_json: bool, root: str = protocol.DEFAULT_ROOT) -> None:
        self.out = out
        self.root = root
        self.as_json = as_json
        self.seen: set[str] = set()
        self.events = 0
        self.lock = threading.Lock()

    def event(self, topic: str, payload: bytes) -> str | None:
        """Print one event message; returns its id when it was new."""
        try:
            msg = protocol.loads(payload)
        except protocol.MessageError as exc:
            print(f"bad event message on {topic}: {exc}", file=sys.stderr, flush=True)
            return None
        item_id = str(msg.get("id", ""))
        with self.lock:
            if item_id and item_id in self.seen:
                return None
            self.seen.add(item_id)
            self.events += 1
        if self.as_json:
            line = json.dumps({"kind": "event", "topic": topic, **msg}, separators=(",", ":"))
        else:
            labels = ",".join(
                f"{lab.get('label')}:{lab.get('score')}"
                for lab in msg.get("labels") or []
                if isinstance(lab, dict)
            )
            line = (
                f"event {msg.get('type', '?'):<6} id={item_id} gateway={msg.get('gateway')} "
                f"camera={msg.get('camera')} start={msg.get('start')} "
                f"score={msg.get('score')}" + (f" labels={labels}" if labels else "")
            )
        print(line, file=self.out, flush=True)
        return item_id

    def snapshot(self, topic: str, payload: bytes, props: dict[str, str]) -> str | None:
        parts = protocol.parse_topic(self.root, topic) or {}
        item_id = props.get(protocol.PROP_ITEM_ID, "")
        with self.lock:
            if item_id and item_id in self.seen:
                return None
            self.seen.add(item_id)
        event_id = props.get("event_id")
        if self.as_json:
            line = json.dumps(
                {
                    "kind": "snapshot",
                    "topic": topic,
                    "id": item_id,
                    "event_id": event_id,
                    "camera": parts.get("camera"),
                    "bytes": len(payload),
                },
                separators=(",", ":"),
            )
        else:
            line = (
                f"snapshot id={item_id} event={event_id or '-'} "
                f"camera={parts.get('camera')} bytes={len(payload)}"
            )
        print(line, file=self.out, flush=True)
        return item_id or None


def run(args: argparse.Namespace) -> int:
    printer = EventPrinter(sys.stdout, args.json, args.root)
    done = threading.Event()
    try:
        client = client_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def ack(topic: str, item_id: str) -> None:
        parts = protocol.parse_topic(args.root, topic)
        if args.ack and parts:
            client.paho.publish(
                f"{args.root}/{parts['gateway']}/ack", protocol.ack_message([item_id]), qos=1
            )

    def on_event(msg: mqtt.MQTTMessage) -> None:
        item_id = printer.event(msg.topic, bytes(msg.payload))
        if item_id:
            ack(msg.topic, item_id)
        if args.count and printer.events >= args.count:
            done.set()

    def on_snapshot(msg: mqtt.MQTTMessage) -> None:
        item_id = printer.snapshot(msg.topic, bytes(msg.payload), user_properties(msg))
        if item_id:
            ack(msg.topic, item_id)

    base = f"{args.root}/{args.gateway}"
    client.subscribe(f"{base}/cam/+/event", on_event)
    client.subscribe(f"{base}/cam/+/snapshot", on_snapshot)
    try:
        client.connect()
    except CentreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"en écoute / listening: {base}/cam/+/event", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.timeout if args.count and args.timeout > 0 else None
    try:
        while not done.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                print(
                    f"error: {printer.events} of {args.count} events arrived within "
                    f"{args.timeout:.0f} s",
                    file=sys.stderr,
                )
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        time.sleep(0.1)  # let the last acks leave
        client.close()
    return 0
