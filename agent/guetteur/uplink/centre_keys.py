"""The centre's command-signing keys on disk: the public halves a gateway trusts (one or more PEM
blocks per file, so a rotation is one more block) and the private half a centre tool signs with.

Provisioning writes the trusted file (``commands.trusted_keys``); the centre server, the demo and
the tests hold a private key and sign through :class:`guetteur.uplink.command_auth.Signer`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.errors import GuetteurError
from guetteur.uplink.command_auth import key_id

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


class KeyFileError(GuetteurError):
    """A key file that cannot be read or holds something other than Ed25519 keys."""


def parse_public_keys(data: bytes, source: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM ``PUBLIC KEY`` blocks) in ``data``."""
    keys: list[Ed25519PublicKey] = []
    for block in _PEM_BLOCK.findall(data):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError:
            raise KeyFileError(
                "keys.format", f"{source}: a PEM block is not a public key"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("keys.type", f"{source}: a key is not Ed25519")
        keys.append(key)
    if not keys:
        raise KeyFileError("keys.empty", f"{source} holds no PEM public key")
    return keys


def load_trusted_keys(paths: Iterable[str | Path]) -> tuple[list[Ed25519PublicKey], list[str]]:
    """The keys of every readable file, and one sentence per file that could not be used (the
    gateway starts anyway and refuses every command until a key is provisioned)."""
    keys: list[Ed25519PublicKey] = []
    problems: list[str] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            problems.append(f"centre key file {path}: {exc.strerror or exc}")
            continue
        try:
            keys += parse_public_keys(data, str(path))
        except KeyFileError as exc:
            problems.append(exc.message)
    return keys, problems


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError("keys.read", f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError("keys.format", f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("keys.type", f"{path} is not an Ed25519 private key")
    return key


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """A new signing key (private half 0600, never overwritten) and its public half; returns its
    key id, the fingerprint the gateway's log and the commands name."""
    key = Ed25519PrivateKey.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public_path.write_bytes(public_pem(key.public_key()))
    return key_id(key.public_key())
