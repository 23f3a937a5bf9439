"""Signed commands: the centre server signs every command, the gateway runs only what verifies.

Who may do what is decided here by verified identities, never by what a message claims: the
operator, their role, and therefore their PTZ priority and permissions come from the centre's
Ed25519 signature, not from the command body. Anybody the broker lets publish could otherwise
move a dome or export video under any name.

The wire form of a signed command (``{root}/{gw}/cmd/{verb}``, JSON)::

    {"v": 1, "id": "...", <the verb's fields>, "auth": {
        "operator": "op1", "role": "operator", "issued_at": "2026-12-02T10:00:00.000Z",
        "expires_at": "2026-12-02T10:00:30.000Z", "nonce": "<32 hex>", "key_id": "<16 hex>",
        "sig": "<base64 Ed25519 signature>"}}

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of the gateway and verb
taken from the topic, the command id, the verb's fields (``body``: everything but ``v``, ``id``
and ``auth``) and every ``auth`` field but ``sig``. ``key_id`` is the fingerprint of the
centre's public key (:func:`key_id`), so a command signed by another key names a key the gateway
does not know; the gateway trusts several keys at once, which is how the centre's key rotates.

Pure: no I/O, injectable clock; the gateway's command dispatcher calls :meth:`Verifier.verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.timeutil import iso_ms, parse_iso

AUTH_FIELD = "auth"

# Roles of the centre's operators, least to most privileged for video (auditor and admin act on
# the register and on accounts, never on cameras).
ROLES = ("viewer", "operator", "supervisor", "auditor", "admin")

# The roles whose signed commands a gateway runs, per verb.
VERB_ROLES: Mapping[str, frozenset[str]] = {
    "status": frozenset({"viewer", "operator", "supervisor", "auditor", "admin"}),
    "snapshot": frozenset({"operator", "supervisor"}),
    "live.start": frozenset({"operator", "supervisor"}),
    "live.renew": frozenset({"operator", "supervisor"}),
    "live.stop": frozenset({"operator", "supervisor"}),
    "ptz": frozenset({"operator", "supervisor"}),
    "export": frozenset({"supervisor"}),
}

# PTZ priority comes from the signed role: a supervisor pre-empts an operator.
PTZ_PRIORITY: Mapping[str, int] = {"operator": 10, "supervisor": 50}

DEFAULT_LIFETIME_S = 30.0  # a PTZ move must not run 30 s late: commands expire quickly
MAX_LIFETIME_S = 600.0  # the gateway refuses longer-lived commands (bounds the replay memory)
DEFAULT_SKEW_S = 30.0  # clock difference tolerated between centre and gateway


class AuthCode:
    """Error codes of refused commands, one per way a command fails to verify."""

    UNSIGNED = "unsigned"
    MALFORMED = "bad_signature_fields"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    FORBIDDEN = "forbidden"


class AuthError(Exception):
    """A command that does not verify: a machine code and a sentence for the log and the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    """Who sent a verified command, as the centre signed it."""

    operator: str
    role: str
    key_id: str
    nonce: str
    expires_at: float

    @property
    def ptz_priority(self) -> int:
        return PTZ_PRIORITY.get(self.role, 0)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _signed_bytes(
    gateway: str,
    verb: str,
    command_id: str | None,
    body: Mapping[str, Any],
    auth: Mapping[str, Any],
) -> bytes:
    return canonical(
        {
            "gateway": gateway,
            "verb": verb,
            "id": command_id,
            "body": dict(body),
            **{k: v for k, v in auth.items() if k != "sig"},
        }
    )


def split_command(payload: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(command id, the verb's fields) of a command payload: what the signature covers."""
    rid = payload.get("id")
    body = {k: v for k, v in payload.items() if k not in ("v", "id", AUTH_FIELD)}
    return (str(rid) if rid is not None else None), body


class Signer:
    """The centre's side: signs commands for one operator's verified session."""

    def __init__(
        self, private_key: Ed25519PrivateKey, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())
        self._clock = clock

    def sign(
        self,
        gateway: str,
        verb: str,
        payload: Mapping[str, Any],
        operator: str,
        role: str,
        lifetime_s: float = DEFAULT_LIFETIME_S,
    ) -> dict[str, Any]:
        """``payload`` (with its ``id``) plus the ``auth`` field that makes the gateway run it."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        now = self._clock()
        command_id, body = split_command(payload)
        auth: dict[str, Any] = {
            "operator": operator,
            "role": role,
            "issued_at": iso_ms(now),
            "expires_at": iso_ms(now + lifetime_s),
            "nonce": os.urandom(16).hex(),
            "key_id": self.key_id,
        }
        signature = self._key.sign(_signed_bytes(gateway, verb, command_id, body, auth))
        auth["sig"] = base64.b64encode(signature).decode()
        return {**payload, AUTH_FIELD: auth}


class NonceMemory:
    """Nonces seen until their command expires: a replayed command is refused. Bounded by the
    number of commands a gateway accepts within ``MAX_LIFETIME_S`` (the rate limits cap that)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_use(self, nonce: str, expires_at: float, now: float) -> bool:
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {n: exp for n, exp in self._seen.items() if exp >= now}
            if nonce in self._seen:
                return False
            self._seen[nonce] = expires_at
            return True


_AUTH_KEYS = ("operator", "role", "issued_at", "expires_at", "nonce", "key_id", "sig")
_NONCE = re.compile(r"^[0-9a-f]{16,64}$")
MAX_OPERATOR_CHARS = 128


class Verifier:
    """The gateway's side: checks signature, freshness, nonce and the role's right to the verb."""

    def __init__(
        self,
        trusted: Iterable[Ed25519PublicKey],
        gateway: str,
        clock: Callable[[], float] = time.time,
        skew_s: float = DEFAULT_SKEW_S,
        nonces: NonceMemory | None = None,
    ) -> None:
        self._keys = {key_id(k): k for k in trusted}
        self._gateway = gateway
        self._clock = clock
        self._skew = skew_s
        self._nonces = nonces or NonceMemory()

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, verb: str, payload: Mapping[str, Any]) -> Identity:
        """The verified identity behind ``payload`` on ``cmd/{verb}``; raises :class:`AuthError`."""
        auth = payload.get(AUTH_FIELD)
        if auth is None:
            raise AuthError(AuthCode.UNSIGNED, "command is not signed by the centre; refused")
        if not isinstance(auth, dict) or not all(
            isinstance(auth.get(k), str) and auth.get(k) for k in _AUTH_KEYS
        ):
            raise AuthError(
                AuthCode.MALFORMED,
                f'"auth" must hold the strings {", ".join(_AUTH_KEYS)}; command refused',
            )
        if not _NONCE.match(auth["nonce"]) or len(auth["operator"]) > MAX_OPERATOR_CHARS:
            raise AuthError(
                AuthCode.MALFORMED,
                "auth nonce must be 16-64 lowercase hex digits and operator at most "
                f"{MAX_OPERATOR_CHARS} characters; command refused",
            )
        key = self._keys.get(auth["key_id"])
        if key is None:
            raise AuthError(
                AuthCode.UNKNOWN_KEY,
                f"command signed with key {auth['key_id'][:16]!r}, which this gateway does not "
                "trust; refused",
            )
        try:
            signature = base64.b64decode(auth["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise AuthError(AuthCode.MALFORMED, "signature is not base64; refused") from None
        command_id, body = split_command(payload)
        try:
            key.verify(signature, _signed_bytes(self._gateway, verb, command_id, body, auth))
        except InvalidSignature:
            raise AuthError(
                AuthCode.BAD_SIGNATURE,
                "signature does not match the command (altered, or meant for another gateway or "
                "verb); refused",
            ) from None
        try:
            issued, expires = parse_iso(auth["issued_at"]), parse_iso(auth["expires_at"])
        except ValueError:
            raise AuthError(AuthCode.MALFORMED, "issued_at/expires_at are not ISO 8601") from None
        now = self._clock()
        if expires - issued > MAX_LIFETIME_S or expires < issued:
            raise AuthError(
                AuthCode.MALFORMED,
                f"command lifetime {expires - issued:.0f} s is outside 0..{MAX_LIFETIME_S:.0f} s",
            )
        if now > expires + self._skew:
            raise AuthError(
                AuthCode.EXPIRED,
                f"command expired at {auth['expires_at']} (gateway time {iso_ms(now)}); refused",
            )
        if issued > now + self._skew:
            raise AuthError(
                AuthCode.NOT_YET_VALID,
                f"command issued at {auth['issued_at']}, in the future of gateway time "
                f"{iso_ms(now)}: check both clocks; refused",
            )
        role = auth["role"]
        allowed = VERB_ROLES.get(verb, frozenset())
        if role not in allowed:
            raise AuthError(
                AuthCode.FORBIDDEN,
                f"role {role!r} of {auth['operator']!r} may not run {verb!r}; refused",
            )
        if not self._nonces.first_use(auth["nonce"], expires + self._skew, now):
            raise AuthError(
                AuthCode.REPLAYED, f"command nonce {auth['nonce'][:12]}… already used; refused"
            )
        return Identity(auth["operator"], role, auth["key_id"], auth["nonce"], expires)
