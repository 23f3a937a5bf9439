"""`guetteur centre export`: an extraction for the police, through the centre server.

    guetteur centre export -s https://csu:8443 -u sup1 -g gw1 --camera cam1 \\
        --from 2026-11-23T10:00:00Z --to 2026-11-23T10:05:00Z \\
        --requisition "PV 2026/1234" --officer "OPJ Durand, commissariat central" -o ./extraction

A supervisor's account is needed. The server registers the request, has the gateway cut the
range (the recorded bytes, never re-encoded), signs the manifest; this tool waits for it and
downloads the folder (video + ``manifest.json``), then checks it as ``guetteur centre verify``
would.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from guetteur.centre.extraction import verify_extraction
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
    parser.add_argument("--from", dest="start", required=True, help="start, ISO 8601 UTC")
    parser.add_argument("--to", dest="end", required=True, help="end, ISO 8601 UTC")
    parser.add_argument("--requisition", required=True, help="legal reference (requisition number)")
    parser.add_argument("--officer", required=True, help="the requesting officer")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="wait at most S seconds"
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    try:
        client = await connect(args)
    except ApiFailure as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    async with client:
        try:
            ext = (
                await client.request(
                    "POST",
                    "/api/exports",
                    {"gateway": args.gateway, "camera": args.camera, "from": args.start,
                     "to": args.end, "requisition": args.requisition, "officer": args.officer},
                )
            )["extraction"]  # fmt: skip
        except ApiFailure as exc:
            print(f"export refused: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        print(f"extraction {ext['id']} requested; waiting for the gateway's video", file=sys.stderr)
        deadline = time.monotonic() + args.timeout
        while ext["state"] == "requested" and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            ext = (await client.request("GET", f"/api/exports/{ext['id']}"))["extraction"]
        if ext["state"] != "ready":
            print(f"export {ext['id']}: {ext['state']} {ext.get('error') or ''}", file=sys.stderr)
            return 1
        args.output.mkdir(parents=True, exist_ok=True)
        for url in ext["files"]:
            data = await client.download(url)
            (args.output / url.rsplit("/", 1)[1]).write_bytes(data)
    check = verify_extraction(args.output)
    for line in check.lines:
        print(line)
    print(f"extraction {ext['id']} written to {args.output}")
    return 0 if check.ok else 1
