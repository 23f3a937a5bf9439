"""What the administrators' tools share: ``-c/--config`` and opening the database."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from guetteur.centre.config import CentreConfig, load_centre_config
from guetteur.centre.db.engine import Database, DatabaseError
from guetteur.centre.db.migrate import upgrade
from guetteur.config import ConfigError

DEFAULT_CONFIG = "/etc/guetteur-centre/centre.yaml"


class ToolError(RuntimeError):
    """A sentence for the administrator; the tool exits 2."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("GUETTEUR_CENTRE_CONFIG", DEFAULT_CONFIG),
        help="centre.yaml (default $GUETTEUR_CENTRE_CONFIG or %(default)s)",
    )


def load(args: argparse.Namespace) -> CentreConfig:
    try:
        return load_centre_config(args.config)
    except ConfigError as exc:
        raise ToolError(exc.report()) from None


def open_db(config: CentreConfig) -> Database:
    """The centre's database, its schema brought up to date."""
    try:
        db = Database(config.database.url, pool_size=2)
        upgrade(db)
    except DatabaseError as exc:
        raise ToolError(str(exc)) from None
    except Exception as exc:
        if Database.unavailable(exc):
            raise ToolError(f"database unreachable: {str(exc).splitlines()[0]}") from None
        raise
    return db


def who() -> str:
    """The administrator acting from the command line, for the register."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


def new_password(prompt_for: str) -> str:
    """From $GUETTEUR_NEW_PASSWORD, or asked twice on the terminal."""
    env = os.environ.get("GUETTEUR_NEW_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise ToolError("set $GUETTEUR_NEW_PASSWORD or run on a terminal")
    first = getpass.getpass(f"nouveau mot de passe / new password for {prompt_for}: ")
    if getpass.getpass("encore / again: ") != first:
        raise ToolError("the two passwords differ")
    return first
