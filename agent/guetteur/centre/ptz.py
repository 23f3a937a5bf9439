"""`guetteur centre ptz`: steer a gateway's PTZ camera from the centre side.

    guetteur centre ptz -b mqtt://broker:1883 -g gw1 --camera dome1 move --pan 0.5
    guetteur centre ptz ... --camera dome1 move --pan -0.3 --repeat-for 5   # hold 5 s, then stop
    guetteur centre ptz ... --camera dome1 goto_preset --preset 3

A continuous move stops by itself on the gateway when it is not renewed within the camera's
dead-man timeout (1 s by default): ``--repeat-for`` re-sends it well inside that window (every
dead_man_s / 3, from the gateway's reply), then sends ``stop`` — also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from guetteur.centre.client import (
    LOCAL_BROKER,
    CentreClient,
    CentreError,
    add_connection_arguments,
    add_gateway_argument,
    add_signing_arguments,
    client_from_args,
)
from guetteur.uplink import protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, broker=LOCAL_BROKER)
    add_signing_arguments(parser, operator=False)
    add_gateway_argument(parser)
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument("action", choices=protocol.PTZ_ACTIONS, help="what the camera should do")
    for name in protocol.PTZ_FIELDS:
        kind = int if name == "preset" else float
        parser.add_argument(f"--{name}", type=kind, help=protocol.PTZ_FIELD_HELP[name])
    parser.add_argument("--operator", help="operator name recorded in the audit trail")
    parser.add_argument("--priority", type=int, default=0, help="0..100; higher pre-empts")
    parser.add_argument(
        "--repeat-for",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="move/zoom: keep the move alive this long (renewing it), then stop",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="reply timeout, seconds")
    parser.add_argument("--json", action="store_true", help="print replies as JSON")


def build_payload(args: argparse.Namespace, action: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"camera": args.camera, "action": action or args.action}
    if action is None:
        for name in protocol.PTZ_FIELDS:
            value = getattr(args, name)
            if value is not None:
                payload[name] = value
    if args.operator:
        payload["operator"] = args.operator
    payload["priority"] = args.priority
    return payload


def _show(reply: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply), flush=True)
    elif reply.get("ok"):
        extra = {k: v for k, v in reply.items() if k not in ("ok", "id", "v")}
        print("ok " + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)
    else:
        err = reply.get("error", {})
        print(f"refused [{err.get('code')}]: {err.get('message')}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.repeat_for and args.action not in protocol.PTZ_CONTINUOUS:
        print("--repeat-for only applies to move and zoom", file=sys.stderr)
        return 2
    try:
        client = client_from_args(args)
        client.connect()
    except (CentreError, ValueError) as exc:
        print(f"ptz: {exc}", file=sys.stderr)
        return 2
    try:
        return _steer(client, args)
    except CentreError as exc:
        print(f"ptz: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _steer(client: CentreClient, args: argparse.Namespace) -> int:
    payload = build_payload(args)
    reply = client.request(args.gateway, "ptz", payload, timeout=args.timeout)
    _show(reply, args.json)
    if not reply.get("ok") or not args.repeat_for:
        return 0 if reply.get("ok") else 1
    renew_s = float(reply.get("dead_man_s", 1.0)) / 3.0
    end = time.monotonic() + args.repeat_for
    try:
        while time.monotonic() < end:
            time.sleep(min(renew_s, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            reply = client.request(args.gateway, "ptz", payload, timeout=args.timeout)
            if not reply.get("ok"):
                _show(reply, args.json)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        stop = client.request(
            args.gateway, "ptz", build_payload(args, "stop"), timeout=args.timeout
        )
        _show(stop, args.json)
    return 0 if stop.get("ok") else 1
