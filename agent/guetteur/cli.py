"""Command line: `guetteur run | demo | config … | doctor | detect | discover | export | provision |
update | centre (serve | config | db | user | register | key | verify | receive | events | live |
ptz | snapshot | export)`.

Tools owned by other modules expose ``add_arguments(parser)`` and ``run(args) -> int``. A tool's
module is imported only when that tool runs (or its ``--help`` is asked for): `guetteur run` on a
gateway loads none of the centre tools or technician tools, and an optional dependency missing
for one tool never breaks the others.

Flags mean one thing everywhere: ``-c`` is ``--config``; the centre's broker tools (receive,
events) share ``-b/--broker``, ``--root``, ``--ca/--cert/--key``
(``centre.client.add_connection_arguments``); the operators' tools (live, ptz, snapshot, export)
go through the centre server and share ``-s/--server``, ``-u/--user``, ``--token-file``
(``centre.apiclient.add_server_arguments``); all of them ``-g/--gateway``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from guetteur import __version__

log = logging.getLogger("guetteur")

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args).
TOOLS: dict[str, tuple[str, str]] = {
    "doctor": ("guetteur.ops.doctor", "check this gateway: config, cameras, broker, clock, disk"),
    "detect": (
        "guetteur.analytics.detection.cli",
        "run the object detector on an image or video file",
    ),
    "discover": ("guetteur.ops.discover", "find ONVIF cameras on the LAN (WS-Discovery)"),
    "export": ("guetteur.record.export_cli", "export a recorded time range of a camera to MP4"),
    "provision": ("guetteur.ops.provision", "first-boot provisioning from the boot partition"),
    "update": ("guetteur.ops.update_cli", "verify and install a signed agent update bundle"),
}
CENTRE_TOOLS: dict[str, tuple[str, str]] = {
    # the server and its administration (-c centre.yaml)
    "serve": ("guetteur.centre.admin.serve", "run the centre server: receiver, API, commands"),
    "config": ("guetteur.centre.admin.config", "check a centre.yaml, or print its reference"),
    "db": ("guetteur.centre.admin.db", "migrate the centre database, or show its schema"),
    "user": ("guetteur.centre.admin.user", "operators' accounts: add, disable, reset, token"),
    "register": ("guetteur.centre.admin.register", "verify or export the access register"),
    "key": ("guetteur.centre.admin.key", "make or show the centre's signing key"),
    "verify": ("guetteur.centre.admin.verify", "check an extraction or a register report"),
    # what gateways send, straight from the broker (-b)
    "receive": (
        "guetteur.centre.receiver.cli",
        "store events, snapshots and clips; acknowledge them (the server without its API)",
    ),
    "events": ("guetteur.centre.tools.events", "print events as the centre receives them"),
    # operators' tools, through the server (-s, -u)
    "live": ("guetteur.centre.tools.live", "watch a camera live (fMP4 to a file or stdout)"),
    "ptz": ("guetteur.centre.tools.ptz", "steer a PTZ camera"),
    "snapshot": (
        "guetteur.centre.tools.snapshot",
        "ask a gateway for a snapshot now; save the JPEG",
    ),
    "export": (
        "guetteur.centre.tools.export_cli",
        "extract recorded video for the police (signed)",
    ),
}


class LazyToolParser(argparse.ArgumentParser):
    """A subcommand parser whose arguments ``tool_module`` defines: the module is imported the
    first time this parser is used (its command runs or its help is shown), never to build the
    parser of another command."""

    def __init__(self, *args: Any, tool_module: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tool_module = tool_module
        self._missing: ImportError | None = None

    def _load_tool(self) -> None:
        module, self._tool_module = self._tool_module, None
        if module is None:
            return
        try:
            tool = importlib.import_module(module)
        except ImportError as exc:
            self._missing = exc
            self.set_defaults(func=lambda _args, error=exc: _missing(self.prog, error))
            return
        tool.add_arguments(self)
        self.set_defaults(func=tool.run)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._load_tool()
        if self._missing is not None:  # its arguments are unknown: say why instead of parsing
            return super().parse_known_args([], namespace)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load_tool()
        return super().format_help()

    def format_usage(self) -> str:
        self._load_tool()
        return super().format_usage()


def _missing(prog: str, exc: ImportError) -> int:
    print(f"{prog}: not available in this installation ({exc})", file=sys.stderr)
    return 2


def setup_logging(level: str = "INFO") -> None:
    """journald under systemd, stderr otherwise (UTC, milliseconds); faulthandler on."""
    from guetteur.logsetup import setup_logging as setup

    setup(level)


def _add_tools(sub: argparse._SubParsersAction, tools: dict[str, tuple[str, str]]) -> None:
    for name, (module, help_text) in tools.items():
        sub.add_parser(name, help=help_text, description=help_text, tool_module=module)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; imports no tool module (see LazyToolParser)."""
    parser = argparse.ArgumentParser(prog="guetteur", description="Guetteur camera-gateway agent")
    parser.add_argument("--version", action="version", version=f"guetteur {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=LazyToolParser
    )

    p = sub.add_parser("run", help="run the agent (systemd runs this)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run a demo: private broker, a test camera, events printed")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="check a config file or print the config reference")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file: exit 0 if valid, 1 if not")
    c.add_argument("file")
    c.set_defaults(func=cmd_config_check)
    c = csub.add_parser("reference", help="print the config reference (Markdown)")
    c.set_defaults(func=cmd_config_reference)

    _add_tools(sub, TOOLS)

    p = sub.add_parser("centre", help=f"centre-side tools ({', '.join(CENTRE_TOOLS)})")
    _add_tools(p.add_subparsers(dest="centre_command", required=True, metavar="TOOL"), CENTRE_TOOLS)
    return parser


# -- commands ------------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from guetteur.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    print(f"{args.file}: valid — gateway {config.gateway_id}, {len(config.cameras)} camera(s)")
    return 0


def cmd_config_reference(_args: argparse.Namespace) -> int:
    from guetteur.config.reference import config_reference

    print(config_reference(), end="")
    return 0


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from guetteur.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        print("the agent does not start with an invalid config", file=sys.stderr)
        return 1
    setup_logging(args.log_level or config.logging.level)
    from guetteur.runtime.gateway import Gateway

    stop = threading.Event()
    _install_stop_handlers(stop)
    gateway = Gateway(config)
    gateway.start()
    try:
        gateway.run(stop)
    finally:
        gateway.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from guetteur.dev.demo import run_demo

    setup_logging(args.log_level or "WARNING")
    stop = threading.Event()
    _install_stop_handlers(stop)
    return run_demo(args.seconds, stop)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("run", "demo"):
        setup_logging(args.log_level or "WARNING")
    func: Callable[[argparse.Namespace], int] = args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
