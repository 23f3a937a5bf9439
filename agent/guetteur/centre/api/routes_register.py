"""The access register for auditors: queries, CSV export, signed report, chain verification."""

from __future__ import annotations

from aiohttp import web

from guetteur.centre.api.base import ApiError, blocking, ok, query_int, requires, services
from guetteur.centre.register import Query, report_html

FILTERS = ("camera", "operator", "gateway", "action", "source", "since", "until", "command_id")


def _query(request: web.Request, limit: int = 500) -> Query:
    q = request.query
    unknown = set(q) - {*FILTERS, "after", "limit"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown filter(s): {', '.join(sorted(unknown))}")
    return Query(
        **{k: q[k] for k in FILTERS if q.get(k)},
        after_seq=query_int(request, "after", 0, 0, 2**62) or None,
        limit=query_int(request, "limit", limit, 1, 10000),
    )


@requires("register.read")
async def register_rows(request: web.Request) -> web.Response:
    register = services(request).register
    rows = await blocking(request, register.query, _query(request))
    return ok(rows=rows, next_after=rows[-1]["seq"] if rows else None)


@requires("register.read")
async def register_csv(request: web.Request) -> web.Response:
    text = await blocking(request, services(request).register.csv, _query(request))
    return web.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="registre.csv"'},
    )


@requires("register.read")
async def register_report(request: web.Request) -> web.Response:
    s = services(request)
    report = await blocking(
        request, s.register.report, _query(request), s.config.centre_id, s.signing_key
    )
    return web.Response(
        text=report_html(report),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="registre.html"'},
    )


@requires("register.read")
async def register_verify(request: web.Request) -> web.Response:
    check = await blocking(request, services(request).register.verify)
    return ok(
        verified=check.ok,
        checked=check.checked,
        problems=check.problems,
        bad_rows=check.bad_rows,
        head_seq=check.head_seq,
        head_hash=check.head_hash,
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/register", register_rows)
    r.add_get("/api/register.csv", register_csv)
    r.add_get("/api/register/report", register_report)
    r.add_get("/api/register/verify", register_verify)
