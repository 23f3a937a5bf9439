"""Updates never go backwards unless a supervisor says so, for one exact version.

A validly signed bundle of an older release is still an attack: it brings back the holes the
newer one closed. The update helper keeps an anti-rollback floor — the newest version that ever
reported healthy — in the release root (``/opt/guetteur/rollback-floor.json``, written by the
root helper only; the agent cannot write ``/opt``), and refuses any bundle older than the floor
or than the running release.

Going back on purpose (a release that misbehaves in the field) takes a downgrade permit: a small
JSON file signed with the supervisor's Ed25519 key (not the release key: whoever can sign
releases cannot by that alone push an old one), naming the one version it allows and when it
expires. It lies beside the bundle in the inbox as ``<bundle>.downgrade``.

Versions compare as PEP 440 release numbers (``1.2.10`` > ``1.2.9``; ``1.3.0rc1`` < ``1.3.0``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.errors import GuetteurError
from guetteur.timeutil import iso_ms, parse_iso

FLOOR_FILE = "rollback-floor.json"
PERMIT_SUFFIX = ".downgrade"

_VERSION = re.compile(
    r"^(?P<release>\d+(?:\.\d+)*)(?:(?P<pre>a|b|rc)(?P<pre_n>\d+))?(?:\.post(?P<post>\d+))?"
    r"(?:\.dev(?P<dev>\d+))?(?:\+[A-Za-z0-9.]+)?$"
)
_PRE_RANK = {"a": 0, "b": 1, "rc": 2}


class RollbackError(GuetteurError):
    """A bundle refused because it would take the gateway backwards."""


def version_key(version: str) -> tuple[Any, ...]:
    """A sortable key for a release version; raises RollbackError for anything else."""
    m = _VERSION.match(version)
    if m is None:
        raise RollbackError(
            "update.version",
            f"version {version!r} is not a release number (N.N.N, with a/b/rc/.post/.dev)",
        )
    release = tuple(int(x) for x in m["release"].split("."))
    release += (0,) * (8 - len(release))
    # dev < pre-release < release < post-release, at the same release number
    pre = (_PRE_RANK[m["pre"]], int(m["pre_n"])) if m["pre"] else (3, 0)
    if m["dev"] is not None and not m["pre"] and m["post"] is None:
        pre = (-1, 0)
    post = int(m["post"]) if m["post"] is not None else -1
    dev = int(m["dev"]) if m["dev"] is not None else 1 << 62
    return (release, pre, post, dev)


def read_floor(root: Path) -> str | None:
    """The newest version that ever reported healthy here, or None (first install)."""
    try:
        fd = os.open(root / FLOOR_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        try:
            return str(json.load(f)["version"])
        except (ValueError, KeyError, TypeError):
            raise RollbackError(
                "update.floor",
                f"{root / FLOOR_FILE} is unreadable: refusing every update until it is restored",
            ) from None


def write_floor(root: Path, version: str) -> None:
    tmp = root / f".{FLOOR_FILE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": version, "time": iso_ms()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / FLOOR_FILE)


@dataclass(frozen=True)
class DowngradePermit:
    version: str
    expires: str
    reason: str


def _permit_bytes(fields: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in fields.items() if k != "sig"}, sort_keys=True, separators=(",", ":")
    ).encode()


def sign_permit(
    key: Ed25519PrivateKey, version: str, reason: str, lifetime_s: float = 86400.0
) -> bytes:
    """A downgrade permit for exactly ``version``, valid ``lifetime_s`` (the supervisor's tool)."""
    version_key(version)
    fields: dict[str, Any] = {
        "version": version,
        "expires": iso_ms(time.time() + lifetime_s),
        "reason": reason,
    }
    fields["sig"] = base64.b64encode(key.sign(_permit_bytes(fields))).decode()
    return json.dumps(fields, indent=2).encode() + b"\n"


def check_permit(data: bytes, key: Ed25519PublicKey, version: str, now: float) -> DowngradePermit:
    """The permit in ``data`` if it is the supervisor's, unexpired and for ``version``."""
    try:
        fields = json.loads(data)
        signature = base64.b64decode(fields["sig"], validate=True)
        key.verify(signature, _permit_bytes(fields))
        permit = DowngradePermit(
            str(fields["version"]), str(fields["expires"]), str(fields["reason"])
        )
        expires = parse_iso(permit.expires)
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidSignature):
        raise RollbackError(
            "update.permit",
            "the downgrade permit is not signed by the supervisor key (or is malformed)",
        ) from None
    if permit.version != version:
        raise RollbackError(
            "update.permit",
            f"the downgrade permit allows version {permit.version}, not {version}",
        )
    if expires < now:
        raise RollbackError("update.permit", f"the downgrade permit expired at {permit.expires}")
    return permit


def check_direction(
    version: str,
    floor: str | None,
    running: str | None,
    permit: bytes | None,
    supervisor_key: Ed25519PublicKey | None,
    now: float | None = None,
) -> DowngradePermit | None:
    """Raise unless ``version`` is not older than the floor and the running release, or an
    older one is allowed by a valid permit (returned)."""
    newest = max((v for v in (floor, running) if v), key=version_key, default=None)
    if newest is None or version_key(version) >= version_key(newest):
        return None
    if permit is None:
        raise RollbackError(
            "update.rollback",
            f"version {version} is older than {newest} (installed or once healthy here): "
            f"refused; going back needs a supervisor-signed downgrade permit for {version}",
        )
    if supervisor_key is None:
        raise RollbackError(
            "update.permit", "a downgrade permit came, but no supervisor key is installed"
        )
    return check_permit(permit, supervisor_key, version, time.time() if now is None else now)
