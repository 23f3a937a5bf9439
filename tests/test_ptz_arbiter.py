"""The PTZ arbiter's rules, driven by a fake clock (pure core: no I/O, no threads)."""

from __future__ import annotations

import pytest

from guetteur.ptz.arbiter import Arbiter, Command, Limits, Refusal, validate
from guetteur.uplink.protocol import ErrorCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LIMITS = Limits(
    max_speed=0.5,
    presets=16,
    pan_range=(-0.5, 0.5),
    home_preset=1,
    idle_return_s=60.0,
    dead_man_s=1.0,
    hold_s=30.0,
)
MOVE = Command("move", 0.5, 0.0, 0.0)


def make() -> tuple[Arbiter, Clock]:
    clock = Clock()
    arb = Arbiter(clock)
    arb.add_camera("dome", LIMITS)
    return arb, clock


def test_dead_man_stops_an_unrenewed_move_and_renewal_defers_it() -> None:
    arb, clock = make()
    arb.acquire("dome", "alice", 0, MOVE)
    clock.now += 0.9
    assert arb.due("dome") is None
    arb.acquire("dome", "alice", 0, MOVE)  # renewal
    clock.now += 0.9
    assert arb.due("dome") is None
    clock.now += 0.2
    assert arb.due("dome") == "stop"
    assert arb.due("dome") is None  # sent once


def test_other_operator_is_locked_out_until_hold_expires() -> None:
    arb, clock = make()
    arb.acquire("dome", "alice", 5, MOVE)
    with pytest.raises(Refusal) as err:
        arb.acquire("dome", "bob", 5, Command("stop"))
    assert err.value.code == ErrorCode.LOCKED
    assert "alice" in err.value.message
    clock.now += 29.0
    with pytest.raises(Refusal):
        arb.acquire("dome", "bob", 1, MOVE)
    clock.now += 1.5  # 30.5 s after alice's last command: hold expired
    grant = arb.acquire("dome", "bob", 0, MOVE)
    assert grant.preempted is None and grant.operator == "bob"


def test_higher_priority_preempts() -> None:
    arb, clock = make()
    arb.acquire("dome", "alice", 3, MOVE)
    grant = arb.acquire("dome", "chief", 4, Command("goto_preset", preset=2))
    assert grant.preempted == "alice"
    assert arb.owner("dome") == ("chief", 4, clock.now + 30.0)
    assert not arb.moving("dome")  # the preset call ended alice's continuous move
    with pytest.raises(Refusal):
        arb.acquire("dome", "alice", 3, MOVE)


def test_idle_return_to_home_once() -> None:
    arb, clock = make()
    assert arb.due("dome") is None  # never moved: nothing to return from
    arb.acquire("dome", "alice", 0, Command("goto_preset", preset=5))
    clock.now += 59.0
    assert arb.due("dome") is None
    clock.now += 1.0
    assert arb.due("dome") == "home"
    clock.now += 100.0
    assert arb.due("dome") is None
    assert arb.owner("dome") is None


def test_validate_clamps_to_camera_limits() -> None:
    cmd = validate("move", LIMITS, pan=1.0, tilt=-0.2)
    assert (cmd.pan, cmd.tilt, cmd.zoom) == (0.5, -0.2, 0.0)  # max_speed 0.5
    assert cmd.clamped == ("pan",)
    cmd = validate("move", LIMITS, pan=1.0, speed=0.25)
    assert cmd.pan == 0.25 and cmd.clamped == ()
    cmd = validate("absolute", LIMITS, pan=0.9, zoom=0.3)
    assert (cmd.pan, cmd.zoom) == (0.5, 0.3) and cmd.clamped == ("pan",)
    assert validate("move", LIMITS, pan=0.0, tilt=0.0).action == "stop"


@pytest.mark.parametrize(
    ("action", "fields", "code"),
    [
        ("move", {"pan": 1.5}, ErrorCode.OUT_OF_RANGE),
        ("move", {"tilt": float("nan")}, ErrorCode.OUT_OF_RANGE),
        ("move", {}, ErrorCode.BAD_REQUEST),
        ("zoom", {"pan": 0.3}, ErrorCode.BAD_REQUEST),
        ("move", {"pan": 0.5, "speed": 2.0}, ErrorCode.OUT_OF_RANGE),
        ("goto_preset", {"preset": 17}, ErrorCode.OUT_OF_RANGE),
        ("set_preset", {"preset": 0}, ErrorCode.OUT_OF_RANGE),
        ("goto_preset", {}, ErrorCode.BAD_REQUEST),
        ("absolute", {"zoom": -0.1}, ErrorCode.OUT_OF_RANGE),
        ("relative", {"pan": 2.5}, ErrorCode.OUT_OF_RANGE),
    ],
)
def test_validate_refuses_values_outside_the_protocol(
    action: str, fields: dict[str, float], code: str
) -> None:
    with pytest.raises(Refusal) as err:
        validate(action, LIMITS, **fields)  # type: ignore[arg-type]
    assert err.value.code == code
