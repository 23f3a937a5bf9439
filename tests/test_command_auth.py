"""Signed commands: every way a command can fail to verify has its own code."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guetteur.uplink.command_auth import (
    AuthCode,
    AuthError,
    Signer,
    Verifier,
    key_id,
)

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def centre_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier(*keys: Ed25519PrivateKey, clock: Clock | None = None) -> Verifier:
    return Verifier([k.public_key() for k in keys], "gw1", clock=clock or Clock())


def ptz(signer: Signer, role: str = "operator", **kw: object) -> dict[str, object]:
    body = {"id": "c1", "camera": "cam1", "action": "move", "pan": 0.5}
    return signer.sign("gw1", "ptz", body, operator="op1", role=role, **kw)  # type: ignore[arg-type]


def refusal(v: Verifier, verb: str, payload: dict[str, object]) -> str:
    with pytest.raises(AuthError) as info:
        v.verify(verb, payload)
    return info.value.code


def test_a_signed_command_verifies_with_the_signed_identity(centre_key: Ed25519PrivateKey) -> None:
    signed = ptz(Signer(centre_key, clock=Clock()), role="supervisor")
    who = verifier(centre_key).verify("ptz", signed)
    assert (who.operator, who.role, who.ptz_priority) == ("op1", "supervisor", 50)
    assert who.key_id == key_id(centre_key.public_key())


def test_each_failure_has_its_own_code(centre_key: Ed25519PrivateKey) -> None:
    clock = Clock()
    signer = Signer(centre_key, clock=clock)
    v = verifier(centre_key, clock=clock)
    unsigned = {"id": "c1", "camera": "cam1", "action": "move", "pan": 0.5}
    assert refusal(v, "ptz", unsigned) == AuthCode.UNSIGNED
    other = ptz(Signer(Ed25519PrivateKey.generate(), clock=clock))
    assert refusal(v, "ptz", other) == AuthCode.UNKNOWN_KEY
    altered = ptz(signer)
    altered["pan"] = -1.0
    assert refusal(v, "ptz", altered) == AuthCode.BAD_SIGNATURE
    assert refusal(v, "live.start", ptz(signer)) == AuthCode.BAD_SIGNATURE  # another verb
    other_gateway = Verifier([centre_key.public_key()], "gw2", clock=clock)
    assert refusal(other_gateway, "ptz", ptz(signer)) == AuthCode.BAD_SIGNATURE
    stale = ptz(signer)
    clock.t += 120
    assert refusal(v, "ptz", stale) == AuthCode.EXPIRED
    future = ptz(signer)
    clock.t -= 240
    assert refusal(v, "ptz", future) == AuthCode.NOT_YET_VALID
    clock.t += 120
    fresh = ptz(signer)
    v.verify("ptz", fresh)
    assert refusal(v, "ptz", fresh) == AuthCode.REPLAYED
    assert refusal(v, "ptz", ptz(signer, role="viewer")) == AuthCode.FORBIDDEN
    broken = ptz(signer)
    broken["auth"] = {"operator": "op1"}
    assert refusal(v, "ptz", broken) == AuthCode.MALFORMED


def test_lifetime_is_bounded(centre_key: Ed25519PrivateKey) -> None:
    signed = ptz(Signer(centre_key, clock=Clock()), lifetime_s=3600)
    assert refusal(verifier(centre_key), "ptz", signed) == AuthCode.MALFORMED


def test_roles_per_verb(centre_key: Ed25519PrivateKey) -> None:
    signer = Signer(centre_key, clock=Clock())
    v = verifier(centre_key)
    export = signer.sign("gw1", "export", {"id": "e", "camera": "c"}, "op1", "operator")
    assert refusal(v, "export", export) == AuthCode.FORBIDDEN
    export = signer.sign("gw1", "export", {"id": "e", "camera": "c"}, "sup1", "supervisor")
    assert v.verify("export", export).operator == "sup1"
    status = signer.sign("gw1", "status", {"id": "s"}, "view1", "viewer")
    assert v.verify("status", status).role == "viewer"
    with pytest.raises(ValueError):
        signer.sign("gw1", "status", {"id": "s"}, "x", "root")


def test_rotation_trusts_old_and_new_keys(centre_key: Ed25519PrivateKey) -> None:
    new_key = Ed25519PrivateKey.generate()
    v = verifier(centre_key, new_key)
    assert v.verify("ptz", ptz(Signer(centre_key, clock=Clock()))).operator == "op1"
    assert v.verify("ptz", ptz(Signer(new_key, clock=Clock()))).operator == "op1"
