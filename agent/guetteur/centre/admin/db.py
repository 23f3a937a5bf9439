"""`guetteur centre db -c centre.yaml upgrade | status`: the schema of the centre's database."""

from __future__ import annotations

import argparse
import sys

from guetteur.centre.admin.common import ToolError, add_config_argument, load
from guetteur.centre.db.engine import Database, DatabaseError
from guetteur.centre.db.migrate import current_revision, head_revision, upgrade


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("action", choices=("upgrade", "status"), help="migrate, or say where it is")


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args)
        db = Database(config.database.url, pool_size=1)
    except (ToolError, DatabaseError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.action == "upgrade":
            before = upgrade(db)
            print(f"{db.describe()}: schema {head_revision()} (was {before or 'empty'})")
        else:
            current = current_revision(db)
            state = (
                "up to date"
                if current == head_revision()
                else f"needs upgrade to {head_revision()}"
            )
            print(f"{db.describe()}: schema {current or 'empty'}, {state}")
    except Exception as exc:
        if not Database.unavailable(exc):
            raise
        print(f"database unreachable: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0
