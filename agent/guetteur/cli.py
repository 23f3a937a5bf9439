"""Command line: `guetteur run | demo | doctor | discover | snapshot | export | config … | centre …`.

Subcommands owned by other modules expose ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when their command runs, so `guetteur --help` stays fast and an optional
dependency missing for one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, ModuleType

from guetteur import __version__

log = logging.getLogger("guetteur")

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args).
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("guetteur.ops.doctor", "check this gateway: config, cameras, broker, clock, disk"),
    "detect": ("guetteur.analytics.detect", "run the object detector on an image or video file"),
    "discover": ("guetteur.ops.discover", "find ONVIF cameras on the LAN (WS-Discovery)"),
    "export": ("guetteur.record.export_cli", "export a recorded time range of a camera to MP4"),
    "provision": ("guetteur.ops.provision", "first-boot provisioning from the boot partition"),
    "update": ("guetteur.ops.updates", "verify and install a signed agent update bundle"),
}
CENTRE_COMMANDS: dict[str, tuple[str, str]] = {
    "events": ("guetteur.centre.events", "print events as the centre receives them"),
    "receive": ("guetteur.centre.receiver", "store events, snapshots and clips; acknowledge them"),
    "live": ("guetteur.centre.live", "watch a camera live (fMP4 to a file or stdout)"),
    "ptz": ("guetteur.centre.ptz", "steer a PTZ camera"),
}


def setup_logging(level: str = "INFO") -> None:
    """journald under systemd, stderr otherwise (UTC, milliseconds); faulthandler on."""
    from guetteur.logsetup import setup_logging as setup

    setup(level)


def _lazy(sub: argparse._SubParsersAction, name: str, module: str, help_text: str) -> None:
    """Register a subcommand whose arguments are defined by ``module``."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    try:
        mod: ModuleType | None = importlib.import_module(module)
    except ImportError as exc:
        parser.set_defaults(func=lambda _a, e=exc: _missing(name, e))
        return
    assert mod is not None
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.run)


def _missing(name: str, exc: ImportError) -> int:
    print(f"guetteur {name}: not available in this installation ({exc})", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guetteur", description="Guetteur camera-gateway agent")
    parser.add_argument("--version", action="version", version=f"guetteur {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("snapshot", help="ask a gateway for a snapshot now (centre side)")
    p.add_argument("-b", "--broker", required=True, help="broker URL, mqtt://HOST:PORT")
    p.add_argument("--gateway", required=True)
    p.add_argument("--camera", required=True)
    p.add_argument("--root", default="guetteur/v1")
    p.set_defaults(func=cmd_snapshot)

    for name, (module, help_text) in EXTERNAL_COMMANDS.items():
        _lazy(sub, name, module, help_text)

    p = sub.add_parser("centre", help="centre-side tools (events, receive, live, ptz)")
    csub = p.add_subparsers(dest="centre_command", required=True, metavar="TOOL")
    for name, (module, help_text) in CENTRE_COMMANDS.items():
        _lazy(csub, name, module, help_text)
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


def cmd_snapshot(args: argparse.Namespace) -> int:
    from guetteur.centre.client import CentreClient, CentreError

    try:
        with CentreClient(args.broker, root=args.root) as client:
            reply = client.request(args.gateway, "snapshot", {"camera": args.camera})
    except CentreError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        err = reply.get("error", {})
        print(f"snapshot refused: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    print(
        f"snapshot {reply['snapshot_id']} at {reply['time']} ({reply['bytes']} bytes) "
        f"published on cam/{args.camera}/snapshot"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("run", "demo"):
        setup_logging(args.log_level or "WARNING")
    func: Callable[[argparse.Namespace], int] = args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
