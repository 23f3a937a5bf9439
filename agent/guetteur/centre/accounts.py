"""Operators, roles and sessions.

Local accounts with argon2id password hashes (argon2-cffi: the reference implementation's
binding, maintained by the PyCA's Hynek Schlawack; the winner of the Password Hashing
Competition, memory-hard against GPU guessing). Roles, least to most: ``viewer`` (events,
snapshots), ``operator`` (+ live, PTZ, snapshot requests, event clips), ``supervisor`` (+ exports
for the police, PTZ priority, judicial holds), ``auditor`` (the register only), ``admin``
(accounts only). Every API call checks a permission of ``PERMISSIONS``.

A login opens a session: a random token (only its sha256 is stored) that expires after
``session_hours`` or ``idle_minutes`` unused. Scripts use an API token an admin issues for an
account (``guetteur centre user token``): same checks, longer life. Failed logins are counted per
account and per address; past ``max_failures`` in the window, logins pause (HTTP 429) and the
log says so. Every account change is in the register.

OIDC seam: an identity provider that has verified a person elsewhere (an OpenID Connect ID
token, a smart card...) maps them to a ``Principal`` and calls ``open_session`` — the rest of the
server only ever sees sessions. ``IdentityProvider`` is the shape such a provider takes;
``LocalPasswords`` is the one shipped.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Connection

from guetteur.centre.config import AuthConfig
from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import login_failures, sessions, users
from guetteur.centre.register import Entry, Register
from guetteur.timeutil import iso_ms
from guetteur.uplink.command_auth import ROLES
from guetteur.uplink.protocol import ID_PATTERN

log = logging.getLogger(__name__)

VIEW, OPER, SUPER, AUDIT, ADMIN = "viewer", "operator", "supervisor", "auditor", "admin"
PERMISSIONS: Mapping[str, frozenset[str]] = {
    "any": frozenset(ROLES),  # a logged-in caller: their identity, logout
    "fleet.read": frozenset({VIEW, OPER, SUPER}),
    "events.read": frozenset({VIEW, OPER, SUPER}),
    "snapshots.read": frozenset({VIEW, OPER, SUPER}),
    "events.handle": frozenset({OPER, SUPER}),
    "clips.read": frozenset({OPER, SUPER}),
    "snapshot.request": frozenset({OPER, SUPER}),
    "live": frozenset({OPER, SUPER}),
    "ptz": frozenset({OPER, SUPER}),
    "export": frozenset({SUPER}),
    "hold": frozenset({SUPER}),
    "register.read": frozenset({AUDIT}),
    "users.manage": frozenset({ADMIN}),
}
MIN_PASSWORD = 10


class AuthFailure(Exception):
    """Refused: ``code`` for machines, a French then English sentence for people."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Principal:
    """A verified person (or script) and their role, for one session."""

    username: str
    role: str
    display_name: str | None = None
    kind: str = "session"  # or "api"
    token_hash: str | None = None

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, frozenset())


class IdentityProvider(Protocol):
    """Verifies who someone is; the server then opens its own session for them."""

    def authenticate(self, username: str, secret: str, address: str) -> Principal: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(name: str) -> str:
    if not ID_PATTERN.match(name):
        raise ValueError(f"user name {name!r}: 1-64 letters, digits, '-' or '_'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters")
    return password


class Accounts:
    """Accounts, sessions and the login rate limit, in the centre database."""

    def __init__(
        self,
        db: Database,
        register: Register,
        config: AuthConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.register = register
        self.config = config or AuthConfig()
        self.clock = clock
        self.hasher = PasswordHasher()

    # -- accounts (each change in the register) -------------------------------------------------

    def add(
        self, username: str, role: str, password: str, display_name: str | None, by: str
    ) -> None:
        check_username(username)
        check_role(role)
        digest = self.hasher.hash(check_password(password))
        now = iso_ms(self.clock())
        with self.db.write() as conn:
            if conn.execute(select(users.c.username).where(users.c.username == username)).first():
                raise ValueError(f"user {username} already exists")
            conn.execute(
                users.insert().values(
                    username=username,
                    display_name=display_name,
                    role=role,
                    password_hash=digest,
                    disabled=False,
                    created=now,
                    updated=now,
                )
            )
            self.register.append(
                conn,
                Entry("account.add", operator=by, detail={"user": username, "role": role}),
            )
        log.info("account %s (%s) created by %s", username, role, by)

    def disable(self, username: str, by: str, disabled: bool = True) -> None:
        with self.db.write() as conn:
            done = conn.execute(
                update(users)
                .where(users.c.username == username)
                .values(disabled=disabled, updated=iso_ms(self.clock()))
                .returning(users.c.username)
            ).first()
            if not done:
                raise ValueError(f"no user {username}")
            if disabled:  # every session and token of the account ends now
                conn.execute(
                    update(sessions).where(sessions.c.username == username).values(revoked=True)
                )
            action = "account.disable" if disabled else "account.enable"
            self.register.append(conn, Entry(action, operator=by, detail={"user": username}))
        log.info("account %s %s by %s", username, "disabled" if disabled else "enabled", by)

    def reset(self, username: str, password: str, by: str, role: str | None = None) -> None:
        """A new password (and role); every open session of the account ends."""
        digest = self.hasher.hash(check_password(password))
        values: dict[str, object] = {"password_hash": digest, "updated": iso_ms(self.clock())}
        if role is not None:
            values["role"] = check_role(role)
        with self.db.write() as conn:
            done = conn.execute(
                update(users)
                .where(users.c.username == username)
                .values(**values)
                .returning(users.c.username)
            ).first()
            if not done:
                raise ValueError(f"no user {username}")
            conn.execute(
                update(sessions).where(sessions.c.username == username).values(revoked=True)
            )
            detail: dict[str, object] = {"user": username}
            if role is not None:
                detail["role"] = role
            self.register.append(conn, Entry("account.reset", operator=by, detail=detail))
        log.info("account %s reset by %s", username, by)

    def list(self) -> list[dict[str, object]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    users.c.username,
                    users.c.display_name,
                    users.c.role,
                    users.c.disabled,
                    users.c.created,
                    users.c.updated,
                ).order_by(users.c.username)
            ).mappings()
            return [dict(r) for r in rows]

    def issue_token(self, username: str, by: str, days: int | None = None, label: str = "") -> str:
        """An API token for a script acting as ``username`` (shown once, stored hashed)."""
        principal = self._principal(username)
        token = "gtk_" + secrets.token_urlsafe(32)
        lifetime = (days or self.config.api_token_days) * 86400.0
        with self.db.write() as conn:
            self._insert_session(conn, principal, token, "api", label, lifetime)
            self.register.append(
                conn,
                Entry(
                    "account.token",
                    operator=by,
                    detail={"user": username, "days": lifetime / 86400, "label": label},
                ),
            )
        return token

    def _principal(self, username: str) -> Principal:
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
        if row is None or row["disabled"]:
            raise ValueError(f"no active user {username}")
        return Principal(username, row["role"], row["display_name"])

    # -- logins ----------------------------------------------------------------------------------

    def authenticate(self, username: str, secret: str, address: str) -> Principal:
        """``LocalPasswords``: the account's argon2 hash; rate-limited per account and address."""
        self._check_rate(username, address)
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
        ok = False
        if row is not None and row["password_hash"]:
            try:
                ok = self.hasher.verify(row["password_hash"], secret)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                ok = False
        else:
            self.hasher.hash(secret)  # same time whether or not the account exists
        if not ok or row is None or row["disabled"]:
            self._failed(username, address, "disabled" if ok else "bad password")
            raise AuthFailure(
                "bad_credentials",
                "Identifiant ou mot de passe incorrect / wrong user name or password",
            )
        if self.hasher.check_needs_rehash(row["password_hash"]):
            with self.db.write() as conn:
                conn.execute(
                    update(users)
                    .where(users.c.username == username)
                    .values(password_hash=self.hasher.hash(secret))
                )
        return Principal(username, row["role"], row["display_name"])

    def _check_rate(self, username: str, address: str) -> None:
        since = iso_ms(self.clock() - self.config.failure_window_minutes * 60)
        with self.db.read() as conn:
            by_user, by_addr = (
                conn.execute(
                    select(func.count())
                    .select_from(login_failures)
                    .where(column == value, login_failures.c.time >= since)
                ).scalar_one()
                for column, value in (
                    (login_failures.c.username, username[:256]),
                    (login_failures.c.address, address[:64]),
                )
            )
        if max(by_user, by_addr) >= self.config.max_failures:
            log.warning(
                "login of %r from %s refused: %d failures for the account, %d from the address "
                "in the last %.0f min",
                username[:64],
                address,
                by_user,
                by_addr,
                self.config.failure_window_minutes,
            )
            raise AuthFailure(
                "rate_limited",
                "Trop d'échecs de connexion, réessayez plus tard / too many failed logins, "
                "try again later",
                429,
            )

    def _failed(self, username: str, address: str, why: str) -> None:
        log.warning("failed login for %r from %s (%s)", username[:64], address, why)
        with self.db.write() as conn:
            conn.execute(
                login_failures.insert().values(
                    username=username[:256], address=address[:64], time=iso_ms(self.clock())
                )
            )

    # -- sessions --------------------------------------------------------------------------------

    def open_session(self, principal: Principal, label: str = "") -> tuple[str, str]:
        """A session for a verified principal (any IdentityProvider); returns (token, expiry)."""
        token = secrets.token_urlsafe(32)
        lifetime = self.config.session_hours * 3600
        with self.db.write() as conn:
            expires = self._insert_session(conn, principal, token, "session", label, lifetime)
        log.info("%s (%s) logged in", principal.username, principal.role)
        return token, expires

    def _insert_session(
        self, conn: Connection, principal: Principal, token: str, kind: str, label: str, life: float
    ) -> str:
        now = self.clock()
        expires = iso_ms(now + life)
        conn.execute(
            sessions.insert().values(
                token_hash=token_hash(token),
                username=principal.username,
                kind=kind,
                label=label[:256],
                created=iso_ms(now),
                expires=expires,
                last_seen=iso_ms(now),
                revoked=False,
            )
        )
        return expires

    def session(self, token: str) -> Principal:
        """The principal of a live session or API token; AuthFailure otherwise."""
        digest = token_hash(token)
        now = self.clock()
        with self.db.read() as conn:
            row = (
                conn.execute(
                    select(sessions, users.c.role, users.c.display_name, users.c.disabled)
                    .join(users, users.c.username == sessions.c.username)
                    .where(sessions.c.token_hash == digest)
                )
                .mappings()
                .first()
            )
        if row is None or row["revoked"] or row["disabled"]:
            raise AuthFailure("unauthenticated", "Non connecté / not logged in")
        idle_limit = iso_ms(now - self.config.idle_minutes * 60)
        if row["expires"] < iso_ms(now) or (
            row["kind"] == "session" and row["last_seen"] < idle_limit
        ):
            raise AuthFailure(
                "session_expired",
                "Session expirée, reconnectez-vous / session expired, log in again",
            )
        if row["last_seen"] < iso_ms(now - 60):  # at most one write a minute per session
            with self.db.write() as conn:
                conn.execute(
                    update(sessions)
                    .where(sessions.c.token_hash == digest)
                    .values(last_seen=iso_ms(now))
                )
        return Principal(row["username"], row["role"], row["display_name"], row["kind"], digest)

    def close_session(self, principal: Principal) -> None:
        if principal.token_hash is None:
            return
        with self.db.write() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == principal.token_hash)
                .values(revoked=True)
            )

    def purge(self, now: float | None = None) -> int:
        """Forget expired sessions and old login failures (the retention task calls this)."""
        t = now if now is not None else self.clock()
        with self.db.write() as conn:
            gone = conn.execute(
                delete(sessions)
                .where(or_(sessions.c.expires < iso_ms(t), sessions.c.revoked.is_(True)))
                .returning(sessions.c.token_hash)
            ).all()
            conn.execute(delete(login_failures).where(login_failures.c.time < iso_ms(t - 86400)))
        return len(gone)
