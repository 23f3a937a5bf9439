"""`guetteur centre serve -c centre.yaml`: the centre server (receiver, API, command path)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from guetteur.centre.admin.common import ToolError, add_config_argument, load

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    from guetteur.centre.server import CentreServer
    from guetteur.cli import setup_logging
    from guetteur.keyfiles import KeyFileError

    try:
        config = load(args)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        print("the centre server does not start with an invalid config", file=sys.stderr)
        return 1
    setup_logging(args.log_level or config.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            server = CentreServer(config)
        except KeyFileError as exc:
            print(f"centre serve: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(f"centre serve: cannot start: {exc}", file=sys.stderr)
            return 2

        def ready(port: int) -> None:
            print(f"centre {config.centre_id}: listening on port {port}", flush=True)

        await server.serve(stop, ready)
        return 0

    return asyncio.run(main())
