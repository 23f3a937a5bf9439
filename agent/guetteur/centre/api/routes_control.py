"""Acting on cameras: snapshot requests, PTZ, live views (relayed fMP4 over a WebSocket) and
police extractions. Each goes through the signed, registered command path (``Commander``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from guetteur.centre.api.base import (
    ApiError,
    blocking,
    body,
    ok,
    principal,
    relay,
    requires,
    services,
)
from guetteur.centre.extraction import ExtractionRequest
from guetteur.centre.register import Entry
from guetteur.timeutil import iso_ms, parse_iso
from guetteur.uplink.protocol import PTZ_FIELD_HELP, PtzAction, valid_id


def _target(request: web.Request) -> tuple[str, str]:
    gw, cam = request.match_info["gateway"], request.match_info["camera"]
    if not valid_id(gw) or not valid_id(cam):
        raise ApiError(400, "bad_request", "gateway and camera: 1-64 letters, digits, '-' or '_'")
    return gw, cam


# -- snapshot requests and PTZ -------------------------------------------------------------------


@requires("snapshot.request")
async def request_snapshot(request: web.Request) -> web.Response:
    gw, cam = _target(request)
    s = services(request)
    reply = await blocking(
        request, s.commander.send, principal(request), gw, "snapshot", {"camera": cam}, camera=cam
    )
    item = reply.get("snapshot_id")
    return ok(
        snapshot_id=item,
        time=reply.get("time"),
        bytes=reply.get("bytes"),
        url=f"/api/snapshots/{gw}/{item}" if item else None,
    )


class Ptz(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: PtzAction = Field(description=PTZ_FIELD_HELP["action"])
    pan: float | None = Field(None, allow_inf_nan=False)
    tilt: float | None = Field(None, allow_inf_nan=False)
    zoom: float | None = Field(None, allow_inf_nan=False)
    speed: float | None = Field(None, allow_inf_nan=False)
    preset: int | None = None


@requires("ptz")
async def ptz(request: web.Request) -> web.Response:
    gw, cam = _target(request)
    cmd = await body(request, Ptz)
    fields = {k: v for k, v in cmd.model_dump().items() if v is not None}
    reply = await blocking(
        request, services(request).commander.ptz, principal(request), gw, cam, fields
    )
    return ok({k: v for k, v in reply.items() if k not in ("ok", "id", "v")})


# -- live ----------------------------------------------------------------------------------------


class LiveStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateway: str = Field(min_length=1, max_length=64)
    camera: str = Field(min_length=1, max_length=64)
    stream: Literal["main", "sub"] = "main"


@requires("live")
async def live_start(request: web.Request) -> web.Response:
    spec = await body(request, LiveStart)
    if not valid_id(spec.gateway) or not valid_id(spec.camera):
        raise ApiError(400, "bad_request", "gateway and camera: 1-64 letters, digits, '-' or '_'")
    session = await relay(request).start(principal(request), spec.gateway, spec.camera, spec.stream)
    return ok(status=201, **session.describe())


@requires("live")
async def live_list(request: web.Request) -> web.Response:
    who = principal(request)
    mine = [
        s.describe() for s in relay(request).sessions.values() if s.who.username == who.username
    ]
    return ok(sessions=mine)


@requires("live")
async def live_renew(request: web.Request) -> web.Response:
    session = relay(request).renew(principal(request), request.match_info["session"])
    return ok(session=session.id, lease_s=session.lease_s)


@requires("live")
async def live_stop(request: web.Request) -> web.Response:
    await relay(request).stop(principal(request), request.match_info["session"])
    return ok()


@requires("live")
async def live_ws(request: web.Request) -> web.StreamResponse:
    """Binary messages: the init segment, then fMP4 fragments (decodable from the first);
    text messages: JSON ``{"type": "session"|"end", ...}``."""
    live = relay(request)
    sid = request.match_info["session"]
    viewer = live.attach(principal(request), sid)
    session = live.sessions[sid]
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024)
    await ws.prepare(request)

    async def drain_incoming() -> None:  # close frames and pings; the client sends nothing else
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    reader = asyncio.ensure_future(drain_incoming())
    try:
        await ws.send_str(json.dumps({"type": "session", **session.describe()}))
        while not ws.closed:
            getter = asyncio.ensure_future(viewer.queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            item = getter.result()
            if item is None:
                await ws.send_str(json.dumps({"type": "end", "reason": session.ended}))
                break
            await ws.send_bytes(item.data)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        reader.cancel()
        live.detach(sid, viewer)
        await ws.close()
    return ws


# -- playback of recordings (an export cut by the gateway, not a police extraction) -------------


class Playback(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    gateway: str = Field(min_length=1, max_length=64, description="the gateway that records it")
    camera: str = Field(min_length=1, max_length=64, description="the camera")
    from_: str = Field(alias="from", max_length=64, description="start of the range, ISO 8601")
    to: str = Field(max_length=64, description="end of the range, ISO 8601")


@requires("export")
async def playback(request: web.Request) -> web.Response:
    """The gateway cuts the range from its ring (the recorded bytes, remuxed) and sends it as a
    clip; the answer names the clip's URL, which ``?wait=S`` holds until it has arrived. The
    command is registered under the caller; each viewing of the clip is registered too.
    Supervisors only: gateways run ``export`` for the supervisor role alone (docs/security.md),
    so an operator is refused here rather than by every gateway."""
    spec = await body(request, Playback)
    if not valid_id(spec.gateway) or not valid_id(spec.camera):
        raise ApiError(400, "bad_request", "gateway and camera: 1-64 letters, digits, '-' or '_'")
    try:
        t0, t1 = parse_iso(spec.from_), parse_iso(spec.to)
    except ValueError:
        raise ApiError(400, "bad_request", "from/to: ISO 8601 times") from None
    if t1 <= t0:
        raise ApiError(400, "bad_request", "to must be after from")
    reply = await blocking(
        request,
        services(request).commander.send,
        principal(request),
        spec.gateway,
        "export",
        {"camera": spec.camera, "from": iso_ms(t0), "to": iso_ms(t1)},
        camera=spec.camera,
    )
    clip = reply.get("clip_id")
    return ok(
        status=201,
        clip_id=clip,
        url=f"/api/clips/{spec.gateway}/{clip}",
        gaps=reply.get("gaps") or [],
        **{"from": reply.get("from"), "to": reply.get("to")},
    )


# -- extractions ---------------------------------------------------------------------------------


class Extraction(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    gateway: str
    camera: str
    from_: str = Field(alias="from")
    to: str
    requisition: str = Field(description="legal reference: the requisition number")
    officer: str = Field(description="the requesting officer (name, service)")


class Hold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hold: bool
    reason: str = Field("", max_length=1000)


def _extraction_json(row: dict[str, Any]) -> dict[str, Any]:
    files: list[str] = []
    if row.get("folder") and Path(row["folder"]).is_dir():
        files = sorted(p.name for p in Path(row["folder"]).iterdir() if not p.name.startswith("."))
    return {
        **{k: v for k, v in row.items() if k != "folder"},
        "files": [f"/api/exports/{row['id']}/files/{name}" for name in files],
    }


@requires("export")
async def export_request(request: web.Request) -> web.Response:
    spec = await body(request, Extraction)
    req = ExtractionRequest(
        spec.gateway, spec.camera, spec.from_, spec.to, spec.requisition, spec.officer
    )
    try:
        row = await blocking(
            request, services(request).extractions.request, principal(request), req
        )
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return ok(status=201, extraction=_extraction_json(row))


@requires("export")
async def export_list(request: web.Request) -> web.Response:
    rows = await blocking(request, services(request).extractions.list)
    return ok(extractions=[_extraction_json(r) for r in rows])


@requires("export")
async def export_get(request: web.Request) -> web.Response:
    row = await blocking(request, services(request).extractions.get, request.match_info["id"])
    return ok(extraction=_extraction_json(row))


@requires("export")
async def export_file(request: web.Request) -> web.StreamResponse:
    s = services(request)
    row = await blocking(request, s.extractions.get, request.match_info["id"])
    name = request.match_info["name"]
    folder = Path(row["folder"] or "/nonexistent")
    path = folder / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no file {name} in extraction {row['id']}")
    who = principal(request)
    await blocking(
        request,
        s.register.record,
        Entry(
            "export.download",
            operator=who.username,
            role=who.role,
            gateway=row["gateway"],
            camera=row["camera"],
            session_id=row["id"],
            detail={"file": name},
        ),
    )
    kind = "application/json" if name.endswith(".json") else "video/mp4"
    return web.FileResponse(path, headers={"Content-Type": kind,
                                           "Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@requires("hold")
async def export_hold(request: web.Request) -> web.Response:
    change = await body(request, Hold)
    if change.hold and not change.reason.strip():
        raise ApiError(400, "bad_request", "reason: a judicial hold states its reason")
    row = await blocking(
        request,
        services(request).extractions.set_hold,
        principal(request),
        request.match_info["id"],
        change.hold,
        change.reason,
    )
    return ok(extraction=_extraction_json(row))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/gateways/{gateway}/cameras/{camera}/snapshot", request_snapshot)
    r.add_post("/api/gateways/{gateway}/cameras/{camera}/ptz", ptz)
    r.add_get("/api/live", live_list)
    r.add_post("/api/live", live_start)
    r.add_post("/api/live/{session}/renew", live_renew)
    r.add_delete("/api/live/{session}", live_stop)
    r.add_get("/api/live/{session}/ws", live_ws)
    r.add_post("/api/playback", playback)
    r.add_get("/api/exports", export_list)
    r.add_post("/api/exports", export_request)
    r.add_get("/api/exports/{id}", export_get)
    r.add_get("/api/exports/{id}/files/{name}", export_file)
    r.add_post("/api/exports/{id}/hold", export_hold)
