"""``guetteur update``: the root helper's command line — one bundle, or every bundle of the
inbox the unprivileged agent (or a technician) drops them in, read without following a symlink
(:mod:`guetteur.ops.inbox`), each checked for direction (:mod:`guetteur.ops.rollback`) and
installed by :mod:`guetteur.ops.updates`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from guetteur.errors import GuetteurError
from guetteur.keyfiles import load_public
from guetteur.ops import inbox as inbox_dir
from guetteur.ops import rollback
from guetteur.ops.updates import apply_bundle, verify_bundle
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", type=Path, help="a signed bundle (*.gtb) to apply")
    parser.add_argument("--inbox", type=Path, help="apply every *.gtb found in this directory")
    parser.add_argument(
        "--releases",
        type=Path,
        default=Path("/opt/guetteur"),
        help="release root holding releases/ and the current link",
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        default=Path("/usr/share/guetteur/update-signing.pub"),
        help="Ed25519 public key (PEM) the bundle must be signed with",
    )
    parser.add_argument(
        "--supervisor-key",
        type=Path,
        default=Path("/usr/share/guetteur/downgrade-signing.pub"),
        help="Ed25519 public key (PEM) of the supervisor who may allow a downgrade (optional)",
    )
    parser.add_argument("--health-file", type=Path, default=Path("/run/guetteur/health.json"))
    parser.add_argument(
        "--restart-command", default="systemctl restart --no-block guetteur.service"
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=120.0,
        help="seconds the new release has to report healthy before rollback",
    )
    parser.add_argument(
        "--verify-only", action="store_true", help="check the bundle, install nothing"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def _process(
    path: Path, args: argparse.Namespace, permit: bytes | None = None
) -> dict[str, object]:
    try:
        key = load_public(args.public_key)
        if args.verify_only:
            with tempfile.TemporaryDirectory() as work:
                v = verify_bundle(path, key, Path(work))
            return {
                "bundle": path.name,
                "status": "verified",
                "version": v.version,
                "message": f"{path.name}: signature and hashes good (version {v.version})",
            }
        supervisor = None
        if permit is not None and args.supervisor_key.exists():
            supervisor = load_public(args.supervisor_key)
        r = apply_bundle(
            path,
            args.releases,
            key,
            args.health_file,
            args.restart_command,
            args.health_timeout,
            supervisor_key=supervisor,
            permit=permit,
        )
        return {
            "bundle": path.name,
            "status": r.status,
            "version": r.version,
            "previous": r.previous,
            "message": r.message,
        }
    except GuetteurError as exc:  # UpdateError, RollbackError, InboxError, KeyFileError
        log.error("update %s refused: %s", path.name, exc.message)
        return {"bundle": path.name, "status": "refused", "code": exc.code, "message": exc.message}


def process_inbox(inbox: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """Every bundle of the inbox, then out of it into ``done/`` with its result, never
    following a symlink the (unprivileged) agent may have planted (guetteur.ops.inbox)."""
    results: list[dict[str, object]] = []
    with (
        inbox_dir.opened_dir(inbox) as inbox_fd,
        inbox_dir.opened_dir(inbox.parent) as parent_fd,
    ):
        done_fd = inbox_dir.open_child_dir(parent_fd, "done")
        try:
            args.releases.mkdir(parents=True, exist_ok=True)
            for name in inbox_dir.bundle_names(inbox_fd):
                with tempfile.TemporaryDirectory(prefix=".incoming-", dir=args.releases) as work:
                    try:
                        copy = inbox_dir.take_bundle(inbox_fd, name, Path(work))
                        permit = inbox_dir.read_small(inbox_fd, name + rollback.PERMIT_SUFFIX)
                    except inbox_dir.InboxError as exc:
                        log.error("update %s refused: %s", name, exc.message)
                        result: dict[str, object] = {
                            "bundle": name, "status": "refused", "code": exc.code,
                            "message": exc.message,
                        }  # fmt: skip
                    else:
                        result = _process(copy, args, permit)
                        result["bundle"] = name
                result["time"] = iso_ms()
                results.append(result)
                # out of the inbox either way, so the path unit does not loop on a refused bundle
                stem = f"{Path(name).stem}.{result['status']}"
                inbox_dir.file_away(inbox_fd, done_fd, name, stem, result)
                try:
                    os.unlink(name + rollback.PERMIT_SUFFIX, dir_fd=inbox_fd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(done_fd)
    return results


def run(args: argparse.Namespace) -> int:
    results: list[dict[str, object]] = []
    if args.inbox is not None:
        try:
            results = process_inbox(args.inbox, args)
        except inbox_dir.InboxError as exc:
            log.error("update inbox refused: %s", exc.message)
            print(f"REFUSED: {exc.message}")
            return 1
    elif args.bundle is not None:
        results.append(_process(args.bundle, args))
    else:
        print("give a bundle or --inbox DIR")
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(
                f"{r['status'].upper() if isinstance(r['status'], str) else r['status']}: "
                f"{r['message']}"
            )
    ok = all(r["status"] in ("installed", "verified") for r in results)
    return 0 if ok else 1
