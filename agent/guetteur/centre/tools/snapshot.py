"""`guetteur centre snapshot`: ask a gateway for a picture of a camera now, through the centre
server, and save it.

    guetteur centre snapshot -s http://csu:8080 -u op1 -g gw1 --camera cam1               # ask
    guetteur centre snapshot -s http://csu:8080 -u op1 -g gw1 --camera cam1 -o cam1.jpg   # save
    guetteur centre snapshot ... -o - | display -

The server signs the request for the operator and registers it; the gateway replies at once and
sends the JPEG through its outbox to the centre's receiver; with ``-o`` the tool fetches it from
the server once it is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from guetteur.centre.tools.apiclient import (
    ApiFailure,
    add_gateway_argument,
    add_server_arguments,
    connect,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
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
        default=10.0,
        metavar="S",
        help="seconds to wait for the picture to reach the centre (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    say = sys.stderr if args.output == "-" else sys.stdout  # stdout may carry the picture
    try:
        client = await connect(args)
    except ApiFailure as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 2
    async with client:
        try:
            reply = await client.request(
                "POST", f"/api/gateways/{args.gateway}/cameras/{args.camera}/snapshot"
            )
        except ApiFailure as exc:
            print(f"snapshot refused: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        print(
            f"snapshot {reply['snapshot_id']} at {reply['time']} ({reply['bytes']} bytes) "
            f"asked of {args.gateway}/{args.camera}",
            file=say,
        )
        if args.output is None:
            return 0
        try:
            jpeg = await client.download(str(reply["url"]), wait=int(min(args.timeout, 30)))
        except ApiFailure as exc:
            print(
                f"snapshot: {reply['snapshot_id']} did not reach the centre within "
                f"{args.timeout:.0f} s ({exc.message}); is the gateway's link up?",
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
