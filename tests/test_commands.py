"""Command dispatch: one reply per command, codes and sentences for bad input."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from guetteur.errors import GuetteurError
from guetteur.ptz.arbiter import Refusal
from guetteur.record.clips import ClipError
from guetteur.uplink import messages, protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from tests.fixtures.publisher import CollectingPublisher


class Move(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str
    speed: float = Field(0.5, ge=0, le=1)
    operator: str | None = None


def handler(ctx: CommandContext, req: Move) -> dict[str, Any]:
    if req.camera == "broken":
        raise CommandError(protocol.ErrorCode.DEVICE_ERROR, "camera broken did not answer")
    if req.camera == "bug":
        raise RuntimeError("boom")
    return {"camera": req.camera, "speed": req.speed, "by": ctx.client_id}


def make() -> tuple[CommandDispatcher, CollectingPublisher]:
    sink = CollectingPublisher()
    d = CommandDispatcher(AuditTrail(sink, "gw1"), rate_per_s=1.0, burst=3)
    d.register("move", Move, handler)
    return d, sink


def test_ok_reply_and_audit() -> None:
    d, sink = make()
    reply = d.handle(
        "move", b'{"v":1,"id":"r1","camera":"c1","operator":"alice"}', {"client_id": "centre-7"}
    )
    assert reply == {"ok": True, "id": "r1", "camera": "c1", "speed": 0.5, "by": "centre-7"}
    # one record before the action (a command that cannot be audited does not run), one after
    before, after = (protocol.loads(item.payload) for item in sink.items)
    assert before["action"] == after["action"] == "cmd.move" and after["operator"] == "alice"
    assert before["outcome"] == "accepted" and before["request_id"] == after["request_id"] == "r1"
    assert after["outcome"] == "ok" and after["client_id"] == "centre-7"


def test_bad_inputs_get_codes_and_sentences() -> None:
    d, _ = make()
    cases = {
        b"not json": "bad_request",
        b"[1,2]": "bad_request",
        b'{"v":2,"camera":"c"}': "bad_request",
        b'{"speed":7,"extra":1}': "bad_request",
    }
    for payload, code in cases.items():
        reply = d.handle("move", payload)
        assert reply["ok"] is False and reply["error"]["code"] == code, payload
        assert len(reply["error"]["message"]) > 10
    reply = d.handle("move", b'{"speed":7,"extra":1}')
    message = reply["error"]["message"]
    assert "camera: Field required" in message and "speed:" in message
    assert "extra: unknown field" in message
    reply = d.handle("fly", b"{}")
    assert reply["error"]["code"] == "unknown_verb" and "move" in reply["error"]["message"]


def test_handler_errors_become_replies() -> None:
    d, _ = make()
    reply = d.handle("move", b'{"camera":"broken"}')
    assert reply["error"] == {"code": "device_error", "message": "camera broken did not answer"}
    reply = d.handle("move", b'{"camera":"bug"}')
    assert reply["error"]["code"] == "internal_error" and "boom" in reply["error"]["message"]


def test_rate_limit_per_client() -> None:
    d, _ = make()
    replies = [d.handle("move", b'{"camera":"c"}', {"client_id": "a"}) for _ in range(5)]
    assert [r["ok"] for r in replies[:3]] == [True, True, True]
    assert replies[4]["error"]["code"] == "rate_limited"
    # another client has its own budget
    assert d.handle("move", b'{"camera":"c"}', {"client_id": "b"})["ok"] is True


def test_topics_round_trip() -> None:
    t = protocol.Topics("guetteur/v1", "gw1")
    assert t.live("cam1", "s1") == "guetteur/v1/gw1/cam/cam1/live/s1"
    assert protocol.parse_topic("guetteur/v1", t.live("cam1", "s1")) == {
        "gateway": "gw1",
        "camera": "cam1",
        "kind": "live",
        "session": "s1",
    }
    parsed = protocol.parse_topic("guetteur/v1", t.command("ptz"))
    assert parsed is not None and parsed["verb"] == "ptz"
    assert protocol.parse_topic("other", t.status) is None
    assert protocol.valid_id("cam-1_a") and not protocol.valid_id("../etc")


def test_any_coded_error_a_handler_lets_through_is_answered_with_its_code() -> None:
    refusals: list[GuetteurError] = [
        Refusal(protocol.ErrorCode.LOCKED, "camera c is controlled by alice"),
        ClipError(protocol.ErrorCode.NOT_FOUND, "nothing recorded for camera c"),
    ]

    def refuse(_ctx: CommandContext, _req: Move) -> dict[str, Any]:
        raise refusals.pop(0)

    d = CommandDispatcher()
    d.register("move", Move, refuse)
    first = d.handle("move", b'{"id":"r1","camera":"c"}')
    second = d.handle("move", b'{"id":"r2","camera":"c"}')
    assert first == messages.reply_error("r1", "locked", "camera c is controlled by alice")
    assert second["error"] == {"code": "not_found", "message": "nothing recorded for camera c"}


def test_reply_topics_only_in_the_centres_reply_area() -> None:
    root = "guetteur/v1"
    ok = protocol.reply_topic_problem
    assert ok("guetteur/v1/_reply/centre-1/gw1", root) == ""
    assert ok("guetteur/v1/area/x", root, "area/") == ""  # configurable prefix
    refused = {
        "": "no response topic",
        "$SYS/broker/x": "$-topic",
        "guetteur/v1/_reply/+/gw1": "wildcard",
        "guetteur/v1/_reply/#": "wildcard",
        "guetteur/v1/_reply/a\0b": "NUL",
        "guetteur/v1/_reply/": "outside",
        "guetteur/v1/_reply//x": "outside",
        "guetteur/v1/gw1/cam/cam1/event": "outside",
        "guetteur/v1/gw1/audit": "outside",
        "guetteur/v1/_replyX/a": "outside",
        "guetteur/v1/_reply/" + "x" * 600: "longer than 512",
    }
    for topic, why in refused.items():
        assert why in ok(topic, root), topic


def test_without_a_verifier_claims_count_but_with_one_only_the_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from guetteur.uplink.command_auth import Signer, Verifier

    key = Ed25519PrivateKey.generate()
    seen: list[CommandContext] = []

    def record(ctx: CommandContext, _req: Move) -> dict[str, Any]:
        seen.append(ctx)
        return {}

    signed = CommandDispatcher(verifier=Verifier([key.public_key()], "gw1"))
    signed.register("ptz", Move, record)  # a verb with roles
    body = Signer(key).sign("gw1", "ptz", {"id": "1", "camera": "c", "operator": "mallory",
                                             "priority": 100}, "op1", "supervisor")  # fmt: skip
    assert signed.handle("ptz", protocol.dumps(body), {"client_id": "x"})["ok"]
    assert (seen[-1].operator, seen[-1].role, seen[-1].priority) == ("op1", "supervisor", 50)
    assert seen[-1].principal == "op1"
    assert signed.handle("ptz", b'{"camera":"c","operator":"op1"}')["error"]["code"] == "unsigned"
