"""`guetteur centre register -c centre.yaml verify | export`: the access register.

    guetteur centre register verify                 # exit 1 naming every edited or deleted row
    guetteur centre register export --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z \\
        --csv registre.csv --report registre.html   # CSV, and the signed HTML report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guetteur import keyfiles
from guetteur.centre.admin.common import ToolError, add_config_argument, load, open_db
from guetteur.centre.register import Query, Register, report_html


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("verify", help="check the hash chain: name every edited or deleted row")
    p = sub.add_parser("export", help="write the rows of a period as CSV and/or a signed report")
    for name in ("since", "until", "camera", "operator", "gateway", "action"):
        p.add_argument(f"--{name}", help=f"only rows with this {name}" if name not in ("since", "until")
                       else "ISO 8601 UTC time")  # fmt: skip
    p.add_argument("--csv", type=Path, help="CSV file to write")
    p.add_argument("--report", type=Path, help="signed HTML report to write")


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args)
        db = open_db(config)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return 2
    register = Register(db)
    try:
        if args.action == "verify":
            check = register.verify()
            for problem in check.problems:
                print(problem)
            print(
                f"register: {check.checked} rows, head {check.head_seq}: "
                + ("intact / intègre" if check.ok else "ALTERED / ALTÉRÉ")
            )
            return 0 if check.ok else 1
        if not args.csv and not args.report:
            print("register export: give --csv FILE and/or --report FILE", file=sys.stderr)
            return 2
        query = Query(**{k: getattr(args, k) for k in ("since", "until", "camera", "operator",
                                                        "gateway", "action") if getattr(args, k)})  # fmt: skip
        if args.csv:
            args.csv.write_text(register.csv(query), encoding="utf-8")
            print(f"CSV written to {args.csv}")
        if args.report:
            key = keyfiles.load_private(config.signing_key_file)
            args.report.write_text(
                report_html(register.report(query, config.centre_id, key)), encoding="utf-8"
            )
            print(f"signed report written to {args.report}")
    except (OSError, keyfiles.KeyFileError) as exc:
        print(f"register {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0
