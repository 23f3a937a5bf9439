"""`guetteur centre user -c centre.yaml add|disable|enable|reset|token|list`: operators' accounts.

    guetteur centre user add op1 --role operator --name "Op. Martin"   # password asked twice
    guetteur centre user reset op1 [--role supervisor]                  # new password; sessions end
    guetteur centre user disable op1                                    # sessions and tokens end
    guetteur centre user token script1 --days 30 -o script1.token       # an API token for a script

Passwords come from $GUETTEUR_NEW_PASSWORD or the terminal. Every change is in the register,
under ``cli:{the system user}``.
"""

from __future__ import annotations

import argparse
import os
import sys

from guetteur.centre.accounts import Accounts
from guetteur.centre.admin.common import (
    ToolError,
    add_config_argument,
    load,
    new_password,
    open_db,
    who,
)
from guetteur.centre.register import Register
from guetteur.uplink.command_auth import ROLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("add", help="create an account")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--name", help="display name")
    for action, text in (("disable", "disable an account (its sessions end)"),
                         ("enable", "enable a disabled account")):  # fmt: skip
        sub.add_parser(action, help=text).add_argument("username")
    p = sub.add_parser("reset", help="set a new password (and role); sessions end")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES)
    p = sub.add_parser("token", help="issue an API token for a script acting as the account")
    p.add_argument("username")
    p.add_argument("--days", type=int, help="lifetime (default: auth.api_token_days)")
    p.add_argument("--label", default="", help="what the token is for")
    p.add_argument("-o", "--output", help="write the token to this file (mode 0600)")
    sub.add_parser("list", help="list the accounts")


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args)
        db = open_db(config)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return 2
    accounts = Accounts(db, Register(db), config.auth)
    by = who()
    try:
        if args.action == "add":
            accounts.add(args.username, args.role, new_password(args.username), args.name, by)
            print(f"account {args.username} ({args.role}) created")
        elif args.action in ("disable", "enable"):
            accounts.disable(args.username, by, disabled=args.action == "disable")
            print(f"account {args.username} {args.action}d")
        elif args.action == "reset":
            accounts.reset(args.username, new_password(args.username), by, args.role)
            print(f"account {args.username}: new password set; its sessions have ended")
        elif args.action == "token":
            token = accounts.issue_token(args.username, by, args.days, args.label)
            if args.output:
                fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(token + "\n")
                print(f"API token for {args.username} written to {args.output}")
            else:
                print(token)
        else:
            for row in accounts.list():
                state = "disabled" if row["disabled"] else "active"
                print(
                    f"{row['username']:<20} {row['role']:<11} {state:<8} {row['display_name'] or ''}"
                )
    except (ValueError, ToolError) as exc:
        print(f"user {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0
