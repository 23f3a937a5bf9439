"""Logins, the caller's identity, accounts (admin) and the server's health."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from guetteur.centre.accounts import PERMISSIONS
from guetteur.centre.api.base import (
    COOKIE,
    ApiError,
    blocking,
    body,
    ok,
    principal,
    public,
    requires,
    services,
)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    role: str
    password: str
    display_name: str | None = Field(None, max_length=256)


class Disable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool = True


class Reset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str
    role: str | None = None


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int | None = Field(None, ge=1, le=3650)
    label: str = Field("", max_length=256)


def address(request: web.Request) -> str:
    return request.remote or "?"


@public
async def login(request: web.Request) -> web.Response:
    s = services(request)
    creds = await body(request, Login)
    who = await blocking(
        request, s.accounts.authenticate, creds.username, creds.password, address(request)
    )
    token, expires = await blocking(
        request, s.accounts.open_session, who, f"web {address(request)}"
    )
    response = ok(
        token=token,
        expires=expires,
        user={"username": who.username, "role": who.role, "display_name": who.display_name},
    )
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=s.config.http.secure_cookies,
        max_age=int(s.config.auth.session_hours * 3600),
        path="/",
    )
    return response


@requires("any")
async def logout(request: web.Request) -> web.Response:
    await blocking(request, services(request).accounts.close_session, principal(request))
    response = ok()
    response.del_cookie(COOKIE, path="/")
    return response


@requires("any")
async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return ok(
        username=who.username,
        role=who.role,
        display_name=who.display_name,
        kind=who.kind,
        permissions=sorted(
            p for p, roles in PERMISSIONS.items() if who.role in roles and p != "any"
        ),
    )


@public
async def health(request: web.Request) -> web.Response:
    return ok(**services(request).status())


@requires("users.manage")
async def list_users(request: web.Request) -> web.Response:
    return ok(users=await blocking(request, services(request).accounts.list))


async def _account_change(request: web.Request, fn: object, *args: object) -> None:
    try:
        await blocking(request, fn, *args)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


@requires("users.manage")
async def add_user(request: web.Request) -> web.Response:
    new = await body(request, NewUser)
    by = principal(request).username
    accounts = services(request).accounts
    await _account_change(
        request, accounts.add, new.username, new.role, new.password, new.display_name, by
    )
    return ok(status=201, username=new.username, role=new.role)


@requires("users.manage")
async def disable_user(request: web.Request) -> web.Response:
    change = await body(request, Disable)
    name = request.match_info["username"]
    accounts = services(request).accounts
    await _account_change(
        request, accounts.disable, name, principal(request).username, change.disabled
    )
    return ok(username=name, disabled=change.disabled)


@requires("users.manage")
async def reset_user(request: web.Request) -> web.Response:
    change = await body(request, Reset)
    name = request.match_info["username"]
    accounts = services(request).accounts
    await _account_change(
        request, accounts.reset, name, change.password, principal(request).username, change.role
    )
    return ok(username=name)


@requires("users.manage")
async def new_token(request: web.Request) -> web.Response:
    spec = await body(request, NewToken)
    name = request.match_info["username"]
    accounts = services(request).accounts
    try:
        token = await blocking(
            request, accounts.issue_token, name, principal(request).username, spec.days, spec.label
        )
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return ok(status=201, username=name, token=token)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    r.add_get("/api/me", me)
    r.add_get("/api/health", health)
    r.add_get("/api/users", list_users)
    r.add_post("/api/users", add_user)
    r.add_post("/api/users/{username}/disable", disable_user)
    r.add_post("/api/users/{username}/reset", reset_user)
    r.add_post("/api/users/{username}/tokens", new_token)
