"""What the gateways sent, for people: the fleet, events (and their live feed), snapshots, clips,
a camera's timeline. Reading video (a clip) is registered; reading events is not."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from guetteur.centre.api.base import (
    ApiError,
    blocking,
    body,
    feed,
    ok,
    principal,
    query_int,
    requires,
    services,
)
from guetteur.centre.api.feed import event_json, snapshot_json
from guetteur.centre.db.schema import camera_status, clips, events, gateways, register, snapshots
from guetteur.centre.register import Entry
from guetteur.uplink.protocol import valid_id

KEEPALIVE_S = 15.0


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not valid_id(value) and name in ("gateway", "camera", "clip_id"):
        raise ApiError(400, "bad_request", f"{name}: 1-64 letters, digits, '-' or '_'")
    return value


# -- the fleet -----------------------------------------------------------------------------------


@requires("fleet.read")
async def list_gateways(request: web.Request) -> web.Response:
    db = services(request).db

    def read() -> list[dict[str, Any]]:
        with db.read() as conn:
            gws = conn.execute(select(gateways).order_by(gateways.c.gateway)).mappings().all()
            cams = conn.execute(select(camera_status)).mappings().all()
        by_gw: dict[str, list[dict[str, Any]]] = {}
        for c in cams:
            by_gw.setdefault(c["gateway"], []).append(
                {
                    "camera": c["camera"],
                    "state": c["state"],
                    "updated": c["updated"],
                    "status": _json(c["status"]),
                }
            )
        return [
            {
                "gateway": g["gateway"],
                "state": g["state"],
                "site": g["site"],
                "since": g["since"],
                "updated": g["updated"],
                "status": _json(g["status"]),
                "cameras": sorted(by_gw.get(g["gateway"], []), key=lambda c: c["camera"]),
            }
            for g in gws
        ]

    return ok(gateways=await blocking(request, read))


# -- events --------------------------------------------------------------------------------------


@requires("events.read")
async def list_events(request: web.Request) -> web.Response:
    db = services(request).db
    q = request.query
    limit = query_int(request, "limit", 100, 1, 1000)
    before = query_int(request, "before", 0, 0, 2**62)

    def read() -> list[dict[str, Any]]:
        stmt = select(events).order_by(events.c.n.desc()).limit(limit)
        for key, column in (("gateway", events.c.gateway), ("camera", events.c.camera),
                            ("type", events.c.type), ("event_id", events.c.event_id)):  # fmt: skip
            if q.get(key):
                stmt = stmt.where(column == q[key])
        if q.get("label"):
            stmt = stmt.where(events.c.labels.contains(q["label"]))
        if q.get("since"):
            stmt = stmt.where(events.c.started >= q["since"])
        if q.get("until"):
            stmt = stmt.where(events.c.started < q["until"])
        if before:
            stmt = stmt.where(events.c.n < before)
        with db.read() as conn:
            return [event_json(r) for r in conn.execute(stmt).mappings()]

    return ok(events=await blocking(request, read))


@requires("events.read")
async def one_event(request: web.Request) -> web.Response:
    gw, event_id = _id(request, "gateway"), request.match_info["event_id"]
    db = services(request).db

    def read() -> dict[str, Any]:
        with db.read() as conn:
            msgs = (
                conn.execute(
                    select(events)
                    .where(events.c.gateway == gw, events.c.event_id == event_id)
                    .order_by(events.c.n)
                )
                .mappings()
                .all()
            )
            snaps = (
                conn.execute(
                    select(snapshots).where(
                        snapshots.c.gateway == gw, snapshots.c.event_id == event_id
                    )
                )
                .mappings()
                .all()
            )
            clip = (
                conn.execute(
                    select(clips.c.clip_id, clips.c.state, clips.c.size, clips.c.sha256).where(
                        clips.c.gateway == gw, clips.c.event_id == event_id
                    )
                )
                .mappings()
                .first()
            )
            if not msgs:
                raise ApiError(404, "not_found", f"no event {event_id} from {gw}")
            handled = _handled(conn, gw, msgs[0]["camera"], event_id)
        return {
            "handled": handled,
            "messages": [event_json(r) for r in msgs],
            "snapshots": [snapshot_json(s) for s in snaps],
            "clip": None
            if clip is None
            else {**dict(clip), "url": f"/api/clips/{gw}/{clip['clip_id']}"}
            if clip["state"] == "complete"
            else {**dict(clip), "url": None},
        }

    return ok(await blocking(request, read))


class Handled(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=2000)


def _handled(conn: Any, gw: str, camera: str, event_id: str) -> list[dict[str, Any]]:
    """Who marked the event handled, when, with what comment: the register's rows (found by
    camera, indexed, then by the event id in their detail)."""
    rows = conn.execute(
        select(register.c.time, register.c.operator, register.c.detail)
        .where(
            register.c.camera == camera,
            register.c.gateway == gw,
            register.c.action == "event.handled",
        )
        .order_by(register.c.seq)
    ).mappings()
    out = []
    for r in rows:
        detail = _json(r["detail"]) or {}
        if detail.get("event_id") == event_id:
            out.append(
                {"time": r["time"], "operator": r["operator"], "comment": detail.get("comment")}
            )
    return out


@requires("events.handle")
async def handle_event(request: web.Request) -> web.Response:
    gw, event_id = _id(request, "gateway"), request.match_info["event_id"]
    note = await body(request, Handled)
    who = principal(request)
    s = services(request)

    def camera_of() -> str | None:
        with s.db.read() as conn:
            return conn.execute(
                select(events.c.camera)
                .where(events.c.gateway == gw, events.c.event_id == event_id)
                .limit(1)
            ).scalar_one_or_none()

    # an event the centre never received cannot be handled (a typo would be registered forever)
    camera = await blocking(request, camera_of)
    if camera is None:
        raise ApiError(404, "not_found", f"no event {event_id} from {gw}")
    seq = await blocking(
        request,
        s.register.record,
        Entry(
            "event.handled",
            operator=who.username,
            role=who.role,
            gateway=gw,
            camera=camera,
            detail={"event_id": event_id, "comment": note.comment},
        ),
    )
    return ok(register_seq=seq)


@requires("events.read")
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``event`` (with ``id:``), ``snapshot``, ``gateway``, ``camera``."""
    s = services(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    events_feed = feed(request)
    queue = events_feed.subscribe()
    try:
        last = request.headers.get("Last-Event-ID") or request.query.get("after")
        if last and last.isdigit():  # catch up from the database after a reconnection

            def backlog() -> list[dict[str, Any]]:
                with s.db.read() as conn:
                    rows = conn.execute(
                        select(events)
                        .where(events.c.n > int(last))
                        .order_by(events.c.n)
                        .limit(1000)
                    ).mappings()
                    return [{"kind": "event", "id": r["n"], **event_json(r)} for r in rows]

            for old in await blocking(request, backlog):
                await response.write(_sse(old))
        await response.write(b": listening\n\n")
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            await response.write(_sse(item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        events_feed.unsubscribe(queue)
    return response


def _sse(item: dict[str, Any]) -> bytes:
    head = f"id: {item['id']}\n" if item["kind"] == "event" else ""
    return (
        f"{head}event: {item['kind']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n".encode()
    )


# -- snapshots and clips -------------------------------------------------------------------------


@requires("snapshots.read")
async def get_snapshot(request: web.Request) -> web.StreamResponse:
    gw, item = _id(request, "gateway"), request.match_info["item_id"]
    wait_s = min(float(query_int(request, "wait", 0, 0, 30)), 30.0)
    db = services(request).db

    def find() -> str | None:
        with db.read() as conn:
            return conn.execute(
                select(snapshots.c.path).where(
                    snapshots.c.gateway == gw, snapshots.c.item_id == item
                )
            ).scalar_one_or_none()

    deadline = time.monotonic() + wait_s
    path = await blocking(request, find)
    while path is None and time.monotonic() < deadline:  # a snapshot just asked for
        await asyncio.sleep(0.2)
        path = await blocking(request, find)
    if path is None or not Path(path).is_file():
        raise ApiError(404, "not_found", f"no snapshot {item} from {gw}")
    return web.FileResponse(
        path, headers={"Content-Type": "image/jpeg", "Cache-Control": "private, max-age=86400"}
    )


@requires("clips.read")
async def get_clip(request: web.Request) -> web.StreamResponse:
    gw, clip_id = _id(request, "gateway"), _id(request, "clip_id")
    s = services(request)

    def find() -> Any:
        with s.db.read() as conn:
            return (
                conn.execute(select(clips).where(clips.c.gateway == gw, clips.c.clip_id == clip_id))
                .mappings()
                .first()
            )

    wait_s = float(query_int(request, "wait", 0, 0, 60))
    deadline = time.monotonic() + wait_s
    row = await blocking(request, find)
    while (row is None or row["state"] != "complete") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # a playback just asked for: the gateway is cutting it
        row = await blocking(request, find)
    if row is None or row["state"] != "complete" or not Path(row["path"]).is_file():
        raise ApiError(404, "not_found", f"no clip {clip_id} from {gw} (not arrived yet?)")
    if request.headers.get("Range", "bytes=0-").startswith("bytes=0-"):  # a viewing, not a seek
        who = principal(request)
        await blocking(
            request,
            s.register.record,
            Entry(
                "clip.view",
                operator=who.username,
                role=who.role,
                gateway=gw,
                camera=row["camera"],
                detail={"clip_id": clip_id, "sha256": row["sha256"], "event_id": row["event_id"]},
            ),
        )
    return web.FileResponse(row["path"], headers={"Content-Type": "video/mp4"})


@requires("events.read")
async def timeline(request: web.Request) -> web.Response:
    """A camera's events and stored clips over a range (the console's timeline)."""
    gw, cam = _id(request, "gateway"), _id(request, "camera")
    since, until = request.query.get("since"), request.query.get("until")
    if not since or not until:
        raise ApiError(400, "bad_request", "since and until (ISO 8601) are required")
    db = services(request).db

    def read() -> dict[str, Any]:
        with db.read() as conn:
            evs = (
                conn.execute(
                    select(
                        events.c.event_id,
                        events.c.type,
                        events.c.started,
                        events.c.ended,
                        events.c.score,
                        events.c.labels,
                    )
                    .where(
                        events.c.gateway == gw,
                        events.c.camera == cam,
                        events.c.started >= since,
                        events.c.started < until,
                    )
                    .order_by(events.c.n)
                )
                .mappings()
                .all()
            )
            cls = (
                conn.execute(
                    select(
                        clips.c.clip_id,
                        clips.c.started,
                        clips.c.ended,
                        clips.c.event_id,
                        clips.c.request_id,
                        clips.c.size,
                    ).where(
                        clips.c.gateway == gw,
                        clips.c.camera == cam,
                        clips.c.state == "complete",
                        clips.c.ended >= since,
                        clips.c.started < until,
                    )
                )
                .mappings()
                .all()
            )
        merged: dict[str, dict[str, Any]] = {}
        for e in evs:
            item = merged.setdefault(e["event_id"] or "", {"event_id": e["event_id"]})
            item.update({k: e[k] for k in ("started", "score", "labels") if e[k] is not None})
            if e["ended"]:
                item["ended"] = e["ended"]
        return {
            "events": list(merged.values()),
            "clips": [{**dict(c), "url": f"/api/clips/{gw}/{c['clip_id']}"} for c in cls],
            "recordings": None,  # the gateway protocol does not list its ring (yet)
        }

    return ok(await blocking(request, read))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/gateways", list_gateways)
    r.add_get("/api/events", list_events)
    r.add_get("/api/events/stream", stream)
    r.add_get("/api/events/{gateway}/{event_id}", one_event)
    r.add_post("/api/events/{gateway}/{event_id}/handled", handle_event)
    r.add_get("/api/snapshots/{gateway}/{item_id}", get_snapshot)
    r.add_get("/api/clips/{gateway}/{clip_id}", get_clip)
    r.add_get("/api/cameras/{gateway}/{camera}/timeline", timeline)
