"""Ed25519 key files: the one copy of reading and writing the keys that sign update bundles,
downgrade permits, the centre's commands, police extraction manifests and register reports.

Private keys are unencrypted PKCS#8 PEM written 0600 and never overwritten; public keys are PEM
``PUBLIC KEY`` blocks, several per file where a rotation needs the old and the new key at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.errors import GuetteurError

_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)

PathLike = str | os.PathLike[str]


class KeyFileError(GuetteurError):
    """A key file that cannot be read, or holds something other than the Ed25519 key expected."""


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError("keys.read", f"cannot read {what} {path}: {exc.strerror}") from None


def load_private(path: PathLike) -> Ed25519PrivateKey:
    data = _read(path, "the signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError("keys.format", f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("keys.type", f"{path} is not an Ed25519 private key")
    return key


def parse_public_keys(data: bytes, source: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM ``PUBLIC KEY`` blocks) in ``data``, at least one."""
    keys: list[Ed25519PublicKey] = []
    for block in _PEM_PUBLIC.findall(data):
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


def load_public_keys(path: PathLike) -> list[Ed25519PublicKey]:
    return parse_public_keys(_read(path, "the public key file"), str(path))


def load_public(path: PathLike) -> Ed25519PublicKey:
    """The one public key of ``path``."""
    keys = load_public_keys(path)
    if len(keys) > 1:
        raise KeyFileError("keys.format", f"{path} holds {len(keys)} public keys; expected one")
    return keys[0]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate(private_path: PathLike, public_path: PathLike | None = None) -> Ed25519PrivateKey:
    """A new key: its private half written 0600 (never over an existing file), its public half
    beside it when ``public_path`` is given."""
    key = Ed25519PrivateKey.generate()
    target = Path(private_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            "keys.exists", f"{target} exists: refusing to overwrite a signing key"
        ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    if public_path is not None:
        Path(public_path).write_bytes(public_pem(key.public_key()))
    return key
