"""Documents signed with the centre's Ed25519 key (police extraction manifests, register reports).
The same key signs commands to the gateways (``uplink.command_auth``); one key per centre, every
server of a centre shares it, read and written by ``guetteur.keyfiles``.

Signed documents (``sign_document`` / ``verify_document``) are JSON objects with a ``signature``
member over the canonical JSON of the rest, so they verify offline with nothing but the public
key, which they also carry (compare its ``key_id`` with the centre's published one).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.uplink.command_auth import canonical, key_id

SIGNATURE = "signature"


def raw_public(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_document(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``document`` plus a ``signature`` member (algorithm, key id, public key, signature)."""
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    public = key.public_key()
    return {
        **body,
        SIGNATURE: {
            "algorithm": "Ed25519",
            "key_id": key_id(public),
            "public_key": raw_public(public),
            "value": base64.b64encode(key.sign(canonical(body))).decode(),
        },
    }


def verify_document(
    document: dict[str, Any], trusted: Ed25519PublicKey | None = None
) -> tuple[bool, str, str]:
    """(valid, key id, sentence). With ``trusted``, the document must be signed by that key;
    without, by the key it carries (the caller shows the key id to compare)."""
    sig = document.get(SIGNATURE)
    if not isinstance(sig, dict) or not all(
        isinstance(sig.get(k), str) for k in ("key_id", "public_key", "value")
    ):
        return False, "", "no signature (or a malformed one)"
    try:
        carried = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
        value = base64.b64decode(sig["value"], validate=True)
    except (ValueError, binascii.Error):
        return False, "", "the signature or its public key is not valid base64 Ed25519"
    key = trusted or carried
    kid = key_id(key)
    if trusted is not None and key_id(carried) != kid:
        return False, key_id(carried), f"signed by key {key_id(carried)}, not by {kid}"
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    try:
        key.verify(value, canonical(body))
    except InvalidSignature:
        return False, kid, "the signature does not match the content (altered after signing)"
    return True, kid, f"signature valid (key {kid})"
