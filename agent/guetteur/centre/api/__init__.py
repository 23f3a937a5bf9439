"""The centre's HTTP API and the console's static files, on aiohttp.

Why aiohttp: one maintained package serves JSON, static files, server-sent events and
WebSockets, and embeds in a process that also runs MQTT threads (``AppRunner`` on our own event
loop), with a client for the command-line tools and tests. Blocking work (SQLAlchemy, command
round trips) runs on the server's thread pool (``base.blocking``).

Routes (every ``/api/`` route checks a permission of ``accounts.PERMISSIONS``):

- ``POST /api/login`` ``{username, password}`` → session cookie + token; ``POST /api/logout``;
  ``GET /api/me``; ``GET /api/health`` (public);
- ``GET /api/gateways`` (fleet: state, since, status, cameras);
- ``GET /api/events`` (filters, newest first), ``GET /api/events/stream`` (server-sent
  events), ``GET /api/events/{gw}/{event_id}``, ``POST …/handled``;
- ``GET /api/snapshots/{gw}/{item_id}[?wait=S]``, ``GET /api/clips/{gw}/{clip_id}`` (Range);
- ``GET /api/cameras/{gw}/{cam}/timeline?since&until``;
- ``POST /api/gateways/{gw}/cameras/{cam}/snapshot``, ``POST …/ptz``;
- ``POST /api/live`` → session; ``POST /api/live/{s}/renew``; ``DELETE /api/live/{s}``;
  ``GET /api/live/{s}/ws`` (fMP4 over a WebSocket);
- ``POST /api/playback`` → a clip cut by the gateway from its recording (``?wait=S`` on the
  clip's URL waits for it);
- ``POST|GET /api/exports``, ``GET /api/exports/{id}[/files/{name}]``, ``POST …/hold``;
- ``GET /api/register[.csv]``, ``GET /api/register/report``, ``GET /api/register/verify``;
- ``GET|POST /api/users``, ``POST /api/users/{u}/disable|reset|tokens``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from guetteur.centre.api import routes_auth, routes_control, routes_data, routes_register
from guetteur.centre.api.base import SERVICES, Services, middleware

STATIC = Path(__file__).resolve().parents[1] / "static"


def make_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=1024 * 1024)
    app[SERVICES] = services
    routes_auth.add_routes(app)
    routes_data.add_routes(app)
    routes_control.add_routes(app)
    routes_register.add_routes(app)
    static = Path(services.config.http.static_dir) if services.config.http.static_dir else STATIC

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_static("/static/", static, follow_symlinks=False)
    return app
