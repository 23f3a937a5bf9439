"""What every API route shares: the services, the permission each route needs, errors as JSON,
and blocking work (the database, commands) moved off the event loop.

Every route declares its permission with ``@requires("events.read")`` (or ``@public``); a route
without one is refused (secure by default). The middleware authenticates the caller (the session
cookie, or ``Authorization: Bearer TOKEN`` for scripts), checks the permission, refuses a
cross-site state-changing request, and turns every failure into the one error shape of the
whole system: ``{"ok": false, "error": {"code": "...", "message": "..."}}`` with an HTTP status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError

from guetteur.centre.accounts import Accounts, AuthFailure, Principal
from guetteur.centre.api.feed import EventFeed
from guetteur.centre.commands import Commander, CommandFailed
from guetteur.centre.config import CentreConfig
from guetteur.centre.db.engine import Database
from guetteur.centre.extraction import Extractions
from guetteur.centre.media import MediaStore
from guetteur.centre.register import Register
from guetteur.centre.relay import LiveRelay
from guetteur.config import validation_problems

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "guetteur_session"
PUBLIC = "public"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Services:
    """Everything the routes use; built once by the server."""

    config: CentreConfig
    db: Database
    media: MediaStore
    register: Register
    accounts: Accounts
    commander: Commander
    extractions: Extractions
    signing_key: Ed25519PrivateKey
    executor: ThreadPoolExecutor
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})
    relay: LiveRelay | None = None  # made on the event loop at start-up
    feed: EventFeed | None = None  # likewise


SERVICES = web.AppKey("services", Services)
PRINCIPAL = web.RequestKey("principal", Principal)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def requires(permission: str) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.permission = permission  # type: ignore[attr-defined]
        return handler

    return mark


public = requires(PUBLIC)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def relay(request: web.Request) -> LiveRelay:
    r = request.app[SERVICES].relay
    assert r is not None, "the live relay starts with the server"
    return r


def feed(request: web.Request) -> EventFeed:
    f = request.app[SERVICES].feed
    assert f is not None, "the event feed starts with the server"
    return f


def principal(request: web.Request) -> Principal:
    who = request.get(PRINCIPAL)
    assert isinstance(who, Principal), "route without @requires"
    return who


async def blocking(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the server's worker threads (database, command round trips)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        services(request).executor, functools.partial(fn, *args, **kwargs)
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error": {"code": code, "message": message}}, status=status
    )


def ok(data: dict[str, Any] | None = None, status: int = 200, **fields: Any) -> web.Response:
    return web.json_response({"ok": True, **(data or {}), **fields}, status=status)


async def body(request: web.Request, model: type[BaseModel]) -> Any:
    """The request's JSON body validated by ``model``; 400 naming every wrong field."""
    try:
        raw = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "Corps JSON attendu / a JSON body is expected") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, unknown="unknown field", missing=None))
        raise ApiError(400, "bad_request", problems) from None


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: an integer is expected") from None
    return max(lo, min(hi, value))


async def authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    from_cookie = token is None
    token = token or request.cookies.get(COOKIE)
    if not token:
        raise AuthFailure("unauthenticated", "Non connecté / not logged in")
    who = await blocking(request, services(request).accounts.session, token)
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    if from_cookie and (request.method in UNSAFE or websocket):
        _same_origin(request)
    return who


def _same_origin(request: web.Request) -> None:
    """A cookie rides along on cross-site requests; the Origin header tells (browsers send it
    on every POST/DELETE). Scripts with a bearer token are not concerned."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        raise ApiError(403, "cross_origin", f"request from {origin} refused (not this site)")
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
        raise ApiError(403, "cross_origin", "cross-site request refused")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith("/api/")
    try:
        permission = getattr(handler, "permission", None)
        if api and permission != PUBLIC:
            if permission is None:  # unknown route (aiohttp's 404 handler) or an unmarked one
                try:
                    return await handler(request)
                except web.HTTPException as exc:
                    return error_response(exc.status, "not_found", f"no route {request.path}")
            who = await authenticate(request)
            if not who.can(permission):
                raise ApiError(
                    403,
                    "forbidden",
                    f"Droits insuffisants / the role {who.role} may not do this ({permission})",
                )
            request[PRINCIPAL] = who
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except AuthFailure as exc:
        return error_response(exc.status, exc.code, exc.message)
    except CommandFailed as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if not api:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if Database.unavailable(exc):
            log.error("API %s %s: database unavailable: %s", request.method, request.path, exc)
            return error_response(
                503,
                "database_unavailable",
                "Base de données indisponible, réessayez / the database is unavailable, try again",
            )
        log.exception("API %s %s failed", request.method, request.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
