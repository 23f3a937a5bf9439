"""`guetteur centre ptz`: steer a gateway's PTZ camera, through the centre server.

    guetteur centre ptz -s https://csu:8443 -u op1 -g gw1 --camera dome1 move --pan 0.5
    guetteur centre ptz ... --camera dome1 move --pan -0.3 --repeat-for 5   # hold 5 s, then stop
    guetteur centre ptz ... --camera dome1 goto_preset --preset 3

The server signs each command for the logged-in operator (whose role sets the PTZ priority) and
registers the PTZ session. A continuous move stops by itself on the gateway when it is not
renewed within the camera's dead-man timeout (1 s by default): ``--repeat-for`` re-sends it well
inside that window (every dead_man_s / 3, from the reply), then sends ``stop`` — also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from guetteur.centre.tools.apiclient import (
    ApiClient,
    ApiFailure,
    add_gateway_argument,
    add_server_arguments,
    connect,
)
from guetteur.uplink import protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    add_gateway_argument(parser)
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument("action", choices=protocol.PTZ_ACTIONS, help="what the camera should do")
    for name in protocol.PTZ_FIELDS:
        kind = int if name == "preset" else float
        parser.add_argument(f"--{name}", type=kind, help=protocol.PTZ_FIELD_HELP[name])
    parser.add_argument(
        "--repeat-for",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="move/zoom: keep the move alive this long (renewing it), then stop",
    )
    parser.add_argument("--json", action="store_true", help="print replies as JSON")


def build_payload(args: argparse.Namespace, action: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"action": action or args.action}
    if action is None:
        for name in protocol.PTZ_FIELDS:
            value = getattr(args, name)
            if value is not None:
                payload[name] = value
    return payload


def _show(reply: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply), flush=True)
    else:
        extra = {k: v for k, v in reply.items() if k not in ("ok", "id", "v")}
        print("ok " + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)


def _refused(exc: ApiFailure) -> None:
    print(f"refused [{exc.code}]: {exc.message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.repeat_for and args.action not in protocol.PTZ_CONTINUOUS:
        print("--repeat-for only applies to move and zoom", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    try:
        client = await connect(args)
    except ApiFailure as exc:
        print(f"ptz: {exc}", file=sys.stderr)
        return 2
    async with client:
        return await _steer(client, args)


async def _steer(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"/api/gateways/{args.gateway}/cameras/{args.camera}/ptz"
    try:
        reply = await client.request("POST", path, build_payload(args))
    except ApiFailure as exc:
        _refused(exc)
        return 1
    _show(reply, args.json)
    if not args.repeat_for:
        return 0
    renew_s = float(reply.get("dead_man_s", 1.0)) / 3.0
    end = time.monotonic() + args.repeat_for
    code = 0
    try:
        while time.monotonic() < end:
            await asyncio.sleep(min(renew_s, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            await client.request("POST", path, build_payload(args))
    except ApiFailure as exc:
        _refused(exc)
        code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        try:
            _show(await client.request("POST", path, build_payload(args, "stop")), args.json)
        except ApiFailure as exc:
            _refused(exc)
            code = 1
    return code
