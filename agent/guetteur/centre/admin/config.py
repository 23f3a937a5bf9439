"""`guetteur centre config check FILE | reference`: validate a centre.yaml, or print the
reference of its keys (docs/centre-config-reference.md)."""

from __future__ import annotations

import argparse
import sys

from guetteur.centre.config import CentreConfig, load_centre_config
from guetteur.config import ConfigError
from guetteur.config.reference import config_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a centre.yaml: exit 0 if valid, 1 if not")
    check.add_argument("file")
    sub.add_parser("reference", help="print the reference of centre.yaml's keys (Markdown)")


def reference() -> str:
    return config_reference(
        CentreConfig, "Centre configuration reference (centre.yaml)", "guetteur centre config"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "reference":
        print(reference(), end="")
        return 0
    try:
        config = load_centre_config(args.file)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    print(
        f"{args.file}: valid — centre {config.centre_id}, database {config.database.url.split('://')[0]}"
    )
    return 0
