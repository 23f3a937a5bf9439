"""`guetteur centre verify PATH [--key PUBLIC.pem]`: check a police extraction (its folder) or a
register report (the HTML page) offline: the Ed25519 signature, then every file's sha256.
Exit 0 when everything verifies, 1 when anything was altered, 2 when PATH cannot be read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guetteur import keyfiles
from guetteur.centre import keys
from guetteur.centre.extraction import verify_extraction
from guetteur.centre.register import report_from_html, report_html


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="an extraction folder, or a register report .html")
    parser.add_argument("--key", help="the centre's public key (PEM) the signature must be from")


def run(args: argparse.Namespace) -> int:
    trusted = None
    if args.key:
        try:
            trusted = keyfiles.load_public(args.key)
        except keyfiles.KeyFileError as exc:
            print(f"verify: {exc}", file=sys.stderr)
            return 2
    path: Path = args.path
    if path.is_dir():
        check = verify_extraction(path, trusted)
        for line in check.lines:
            print(line)
        print("VERIFIED / VÉRIFIÉ" if check.ok else "NOT VERIFIED / NON VÉRIFIÉ")
        return 0 if check.ok else 1
    try:
        page = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"verify: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    report = report_from_html(page)
    if report is None:
        print(f"{path}: neither an extraction folder nor a signed register report", file=sys.stderr)
        return 2
    valid, _kid, sentence = keys.verify_document(report, trusted)
    print(f"report: {sentence}")
    same = report_html(report) == page
    if not same:
        print("report: the visible page differs from the signed content (edited)")
    ok = valid and same
    print("VERIFIED / VÉRIFIÉ" if ok else "NOT VERIFIED / NON VÉRIFIÉ")
    return 0 if ok else 1
