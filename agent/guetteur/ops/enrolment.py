"""Secrets at rest on a gateway: the enrolment token's life and files that held a secret.

The enrolment token proves the gateway to the centre once, when its certificate request is
signed. It is kept (0600, with its expiry) only until then: it goes once the gateway holds a
device certificate for its own key, or once it expired, whichever comes first. A file that held
a secret is overwritten before it is unlinked (the FAT boot partition has no copy-on-write, so
the zeroes land on the very clusters that held it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from guetteur.timeutil import parse_iso

log = logging.getLogger(__name__)

TOKEN_FILE = "enrolment.token"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"


def overwrite_and_unlink(path: Path) -> None:
    """Zero a file's bytes in place (fsynced), then unlink it: on FAT, or any file system without
    copy-on-write, the secret does not stay readable in free clusters."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        zeros = b"\0" * min(size, 1 << 16)
        written = 0
        while written < size:
            written += os.write(fd, zeros[: size - written])
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def retire_enrolment_token(etc_dir: Path, now: float | None = None) -> str | None:
    """Delete the enrolment token (overwritten first) once it is used — the gateway holds a
    device certificate for its own key — or expired. Returns why it went, or None if kept."""
    token_path = etc_dir / TOKEN_FILE
    try:
        record = json.loads(token_path.read_text())
        expires = parse_iso(str(record["expires"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        expires = 0.0  # unreadable, or the old format without an expiry: treat as expired
    now = time.time() if now is None else now
    reason = None
    if expires <= now:
        reason = "expired"
    elif _certificate_matches_key(etc_dir):
        reason = "used: the device certificate is installed"
    if reason is not None:
        overwrite_and_unlink(token_path)
        log.info("enrolment token %s deleted (%s)", token_path, reason)
    return reason


def _certificate_matches_key(etc_dir: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((etc_dir / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((etc_dir / KEY_FILE).read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return False
    return cert.public_key() == key.public_key()
