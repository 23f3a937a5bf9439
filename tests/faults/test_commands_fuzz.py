"""A fuzzer (Hypothesis, bounded examples) over what the gateway parses from the broker: every
command gets exactly one well-formed reply and the handlers never see an unverified command;
every ack is parsed or refused with MessageError, never anything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.command_auth import Signer, Verifier
from guetteur.uplink.commands import CommandContext, CommandDispatcher
from tests.contract import validate_payload
from tests.fixtures.publisher import CollectingPublisher

pytestmark = pytest.mark.slow  # ~15 s of examples

KEY = Ed25519PrivateKey.generate()
SIGNER = Signer(KEY)
GW = "gw-fz"


class Anything(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str
    speed: float = 0.5


def make() -> tuple[CommandDispatcher, list[CommandContext]]:
    ran: list[CommandContext] = []

    def handler(ctx: CommandContext, _req: Anything) -> dict[str, Any]:
        ran.append(ctx)
        return {"done": True}

    dispatcher = CommandDispatcher(
        AuditTrail(CollectingPublisher(), GW),
        rate_per_s=1e6,
        burst=10**6,
        verifier=Verifier([KEY.public_key()], GW),
    )
    for verb in ("status", "snapshot", "ptz"):
        dispatcher.register(verb, Anything, handler)
    return dispatcher, ran


DISPATCHER, RAN = make()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
verbs = st.sampled_from(["status", "snapshot", "ptz", "", "nope", "live.start"]) | st.text(
    max_size=12
)


def check_reply(reply: dict[str, Any]) -> None:
    validate_payload("reply", protocol.dumps(reply))  # always serialisable, always the contract


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=verbs, payload=st.binary(max_size=300))
def test_any_bytes_get_one_reply_and_run_nothing(verb: str, payload: bytes) -> None:
    before = len(RAN)
    reply = DISPATCHER.handle(verb, payload, {"client_id": "fuzz"})
    check_reply(reply)
    assert reply["ok"] is False
    assert len(RAN) == before


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=verbs, body=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_json_object_gets_one_reply_and_unsigned_runs_nothing(
    verb: str, body: dict[str, Any]
) -> None:
    before = len(RAN)
    raw = json.dumps(body, allow_nan=False).encode("utf-8", "surrogatepass")
    reply = DISPATCHER.handle(verb, raw, {"client_id": "fuzz"})
    check_reply(reply)
    assert reply["ok"] is False and len(RAN) == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    verb=st.sampled_from(["status", "snapshot", "ptz"]),
    body=st.dictionaries(
        st.sampled_from(["camera", "speed", "x", "operator", "priority"]), json_values, max_size=4
    ),
    tamper=st.sampled_from(["none", "body", "verb", "auth", "gateway"]),
)
def test_signed_commands_run_only_as_signed(verb: str, body: dict[str, Any], tamper: str) -> None:
    signed = SIGNER.sign(
        GW if tamper != "gateway" else "other-gw", verb, {"id": "x", **body}, "op1", "supervisor"
    )
    if tamper == "body":
        signed["camera"] = "tampered" if signed.get("camera") != "tampered" else "other"
    elif tamper == "auth":
        signed["auth"] = {**signed["auth"], "role": "admin"}
    run_verb = "snapshot" if tamper == "verb" and verb != "snapshot" else verb
    if tamper == "verb" and verb == "snapshot":
        run_verb = "ptz"
    before = len(RAN)
    reply = DISPATCHER.handle(run_verb, protocol.dumps(signed), {"client_id": "fuzz"})
    check_reply(reply)
    if tamper != "none":  # a value beyond the parser's limits is refused before the signature
        assert reply["ok"] is False and reply["error"]["code"] in {"bad_signature", "bad_request"}
        assert len(RAN) == before
    elif reply["ok"]:
        assert RAN[-1].operator == "op1" and RAN[-1].role == "supervisor"
        assert "operator" not in body or RAN[-1].operator == "op1"
    else:
        assert reply["error"]["code"] == "bad_request" and len(RAN) == before


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_acks_parse_or_are_refused_with_a_sentence(payload: bytes) -> None:
    try:
        ack = protocol.parse_ack(payload)
    except protocol.MessageError as exc:
        assert str(exc)
    else:
        assert all(isinstance(i, str) for i in ack.ids + ack.resend)


def test_the_fuzzer_would_notice_a_handler_that_runs_unsigned() -> None:
    """The property above can fail: a dispatcher without a verifier runs unsigned commands."""
    unsafe = CommandDispatcher()
    ran: list[str] = []

    def handler(_ctx: CommandContext, _req: Anything) -> dict[str, Any]:
        ran.append("x")
        return {}

    unsafe.register("snapshot", Anything, handler)
    assert unsafe.handle("snapshot", b'{"camera":"c"}')["ok"] and ran == ["x"]
