"""The command path to the gateways: register, sign, send, wait for the one reply, register.

Every command an operator causes is recorded in the access register *before* it is sent (the
attempt: who, role, gateway, camera, verb, body, command id), then signed with the centre's
Ed25519 key for that operator and role (``uplink.command_auth.Signer``: the gateway runs only
what verifies, and takes the operator, the role, hence the PTZ priority, from the signature, not
from the body), sent over MQTT 5 request/response (``CentreClient``), and its outcome recorded
(``ok``, the gateway's error code, or ``timeout`` when no reply came: the API answers 504 and the
register keeps the attempt). The body still names the operator for gateways older than signed
commands.

PTZ: a console sends a move every third of the dead-man time while a button is held; those
renewals are signed and sent but not each registered: ``PtzSessions`` opens a PTZ session
(registered) at the first command of an operator on a camera, registers each change of
command, and closes the session (registered) after ``ptz_session_idle_s`` without commands.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from guetteur.centre.accounts import Principal
from guetteur.centre.client import CentreClient, CentreError
from guetteur.centre.config import CommandsConfig
from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import gateways
from guetteur.centre.register import Entry, Register
from guetteur.uplink.command_auth import PTZ_PRIORITY, Signer

log = logging.getLogger(__name__)

# verbs whose gateway models accept an ``operator`` field (for gateways that predate signatures)
_NAMES_OPERATOR = frozenset({"snapshot", "export", "live.start", "live.renew", "live.stop", "ptz"})


class CommandFailed(Exception):
    """The command did not run: an error code, a sentence, and the HTTP status for the API."""

    def __init__(
        self, code: str, message: str, status: int = 422, reply: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.reply = reply


@dataclass
class PtzSession:
    id: str
    operator: str
    role: str
    gateway: str
    camera: str
    opened: float
    last: float
    last_command: tuple[Any, ...] = ()
    commands: int = 0


@dataclass(frozen=True)
class PtzDecision:
    session: PtzSession
    opened: bool
    record: bool


@dataclass
class PtzSessions:
    """Which PTZ commands open a session, which are worth a register row (pure; clock injected)."""

    idle_s: float
    clock: Callable[[], float] = time.monotonic
    _open: dict[tuple[str, str, str], PtzSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def command(
        self, who: Principal, gateway: str, camera: str, body: dict[str, Any]
    ) -> PtzDecision:
        key = (who.username, gateway, camera)
        signature = tuple(
            sorted((k, v) for k, v in body.items() if k not in ("operator", "priority"))
        )
        now = self.clock()
        with self._lock:
            session = self._open.get(key)
            opened = session is None or now - session.last > self.idle_s
            if opened:
                session = PtzSession(
                    uuid.uuid4().hex, who.username, who.role, gateway, camera, now, now
                )
                self._open[key] = session
            assert session is not None
            record = opened or signature != session.last_command
            session.last, session.last_command = now, signature
            session.commands += 1
            return PtzDecision(session, opened, record)

    def expired(self) -> list[PtzSession]:
        """Sessions idle past ``idle_s``, removed."""
        now = self.clock()
        with self._lock:
            gone = [k for k, s in self._open.items() if now - s.last > self.idle_s]
            return [self._open.pop(k) for k in gone]


class Commander:
    def __init__(
        self,
        db: Database,
        register: Register,
        client: CentreClient,
        signer: Signer,
        config: CommandsConfig | None = None,
    ) -> None:
        self.db = db
        self.register = register
        self.client = client
        self.signer = signer
        self.config = config or CommandsConfig()
        self.ptz_sessions = PtzSessions(self.config.ptz_session_idle_s)

    def gateway_state(self, gateway: str) -> str | None:
        """The gateway's last known state; None when it never spoke to this centre."""
        with self.db.read() as conn:
            row = conn.execute(
                select(gateways.c.state).where(gateways.c.gateway == gateway)
            ).first()
        return None if row is None else str(row[0] or "unknown")

    def _known(self, gateway: str) -> str:
        state = self.gateway_state(gateway)
        if state is None:
            raise CommandFailed(
                "unknown_gateway",
                f"Passerelle inconnue / unknown gateway {gateway!r}: it never reported to this "
                "centre",
                404,
            )
        return state

    def send(
        self,
        who: Principal,
        gateway: str,
        verb: str,
        body: dict[str, Any],
        camera: str | None = None,
        session_id: str | None = None,
        record: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Register, sign, send; the gateway's ``ok`` reply, or CommandFailed."""
        state = self._known(gateway)
        command_id = uuid.uuid4().hex
        entry = Entry(
            action=f"cmd.{verb}",
            operator=who.username,
            role=who.role,
            gateway=gateway,
            camera=camera,
            command_id=command_id,
            session_id=session_id,
            detail=body,
        )
        if state == "offline":
            if record:
                self.register.record(entry, _outcome(entry, "gateway_offline"))
            raise CommandFailed(
                "gateway_offline",
                f"Passerelle hors ligne / gateway {gateway} is offline",
                503,
            )
        if record:
            self.register.record(entry)  # before it runs
        payload = {"id": command_id, **body}
        if verb in _NAMES_OPERATOR:
            payload["operator"] = who.username
        signed = self.signer.sign(
            gateway, verb, payload, who.username, who.role, self.config.lifetime_s
        )
        try:
            reply = self.client.request(
                gateway, verb, signed, timeout=timeout_s or self.config.timeout_s
            )
        except CentreError as exc:
            log.warning(
                "command %s %s to %s by %s: %s", verb, command_id, gateway, who.username, exc
            )
            self.register.record(_outcome(entry, "timeout"))
            raise CommandFailed(
                "timeout",
                f"La passerelle n'a pas répondu / gateway {gateway} did not answer {verb} "
                f"within {timeout_s or self.config.timeout_s:.0f} s",
                504,
            ) from None
        if reply.get("ok"):
            if record:
                self.register.record(_outcome(entry, "ok"))
            return reply
        error = reply["error"] if isinstance(reply.get("error"), dict) else {}
        code = str(error.get("code", "error"))[:64]
        self.register.record(_outcome(entry, code))  # refusals always, renewals included
        raise CommandFailed(code, str(error.get("message", "refused"))[:500], 422, reply)

    def ptz(
        self, who: Principal, gateway: str, camera: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self._known(gateway)  # before a PTZ session is opened for it
        decision = self.ptz_sessions.command(who, gateway, camera, body)
        session = decision.session
        if decision.opened:
            self.register.record(
                Entry(
                    "ptz.session.start",
                    operator=who.username,
                    role=who.role,
                    gateway=gateway,
                    camera=camera,
                    session_id=session.id,
                )
            )
        payload = {**body, "camera": camera, "priority": PTZ_PRIORITY.get(who.role, 0)}
        return self.send(
            who,
            gateway,
            "ptz",
            payload,
            camera=camera,
            session_id=session.id,
            record=decision.record,
        )

    def close_idle_ptz_sessions(self) -> int:
        closed = self.ptz_sessions.expired()
        for s in closed:
            self.register.record(
                Entry(
                    "ptz.session.end",
                    operator=s.operator,
                    role=s.role,
                    gateway=s.gateway,
                    camera=s.camera,
                    session_id=s.id,
                    detail={"commands": s.commands, "duration_s": round(s.last - s.opened, 1)},
                )
            )
        return len(closed)


def _outcome(entry: Entry, outcome: str) -> Entry:
    return Entry(
        action=f"{entry.action}.reply",
        operator=entry.operator,
        role=entry.role,
        gateway=entry.gateway,
        camera=entry.camera,
        command_id=entry.command_id,
        session_id=entry.session_id,
        outcome=outcome,
    )
