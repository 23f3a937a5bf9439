"""On-demand live sessions: the camera's own packets, repackaged as fragmented MP4, over MQTT.
This module is the service: the live.start / live.renew / live.stop commands, their limits and
leases, and the audit record of every session.

Data flow, one way::

    source thread ──on_packet──► LiveHub (last GOP cached, live/hub.py) ──► LiveSession queue
    LiveSession thread (live/session.py): Repackager (live/fmp4.py: Annex B normalisation ─►
        PyAV mp4 muxer, no re-encode ─► box splitter ─► fragment grouping)
        ─► link.publish_raw({root}/{gw}/cam/{cam}/live/{session})

The requester subscribes to the session topic *before* live.start, with a session id of its own
choosing (field ``session``), so it receives the cached GOP fragments too (QoS 0 messages sent
before a subscription are never delivered). The messages on that topic are described in
``live/session.py`` and docs/live.md.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from guetteur.config import CameraConfig, LiveConfig
from guetteur.live.fmp4 import CONTENT_TYPE, LIVE_CODECS
from guetteur.live.hub import LiveHub
from guetteur.live.session import LiveSession, SessionLink
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.protocol import ErrorCode, Topics

log = logging.getLogger(__name__)


class LiveLink(SessionLink, Protocol):
    """What live needs of guetteur.uplink.link.Link: its sessions publish, the service names
    their topics."""

    topics: Topics


class LiveStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str = Field(min_length=1, max_length=64)
    stream: Literal["main", "sub"] = "main"
    lease_s: float | None = None
    operator: str | None = Field(None, max_length=128)
    session: str | None = Field(
        None, description="Session id chosen by the requester, so it can subscribe first"
    )


class LiveRenew(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str = Field(min_length=1, max_length=64)
    lease_s: float | None = None
    operator: str | None = Field(None, max_length=128)


class LiveStop(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str = Field(min_length=1, max_length=64)
    operator: str | None = Field(None, max_length=128)


class LiveService:
    """Handles live.start / live.renew / live.stop and ends sessions whose lease passed."""

    def __init__(
        self,
        config: LiveConfig,
        cameras: list[CameraConfig],
        link: LiveLink,
        audit: AuditTrail,
        hubs: dict[str, LiveHub],
        sub_hubs: dict[str, LiveHub] | None = None,
    ) -> None:
        self.config = config
        self.cameras = {c.id: c for c in cameras if c.enabled}
        self.link = link
        self.audit = audit
        self.hubs = hubs
        self.sub_hubs = dict(sub_hubs or {})
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._closing = threading.Event()

    # -- wiring ----------------------------------------------------------------------------

    def register(self, dispatcher: CommandDispatcher) -> None:
        dispatcher.register("live.start", LiveStart, self.handle_start)
        # renewals come every few seconds: the session's own audit record covers them
        dispatcher.register("live.renew", LiveRenew, self.handle_renew, audited=False)
        dispatcher.register("live.stop", LiveStop, self.handle_stop)

    def start(self) -> None:
        """Start the lease ticker (and re-publish init segments after link reconnections)."""
        if self._ticker is not None:
            return
        self._closing.clear()
        self._ticker = threading.Thread(target=self._tick, name="live-leases", daemon=True)
        self._ticker.start()
        add_listener = getattr(self.link, "add_connect_listener", None)
        if callable(add_listener):
            add_listener(self._on_reconnect)

    def close(self) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.join(2.0)
            self._ticker = None
        for session in self.sessions():
            self._end(session.id, "shutdown")

    def sessions(self) -> list[LiveSession]:
        with self._lock:
            return list(self._sessions.values())

    def session(self, session_id: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    # -- commands --------------------------------------------------------------------------

    def handle_start(self, ctx: CommandContext, req: LiveStart) -> dict[str, Any]:
        cfg = self.config
        camera = self.cameras.get(req.camera)
        if camera is None or req.camera not in self.hubs:
            known = ", ".join(sorted(c for c in self.cameras if c in self.hubs)) or "none"
            raise CommandError(
                ErrorCode.UNKNOWN_CAMERA,
                f"no camera {req.camera!r} on this gateway; known: {known}",
            )
        lease = cfg.default_lease_s if req.lease_s is None else req.lease_s
        if not cfg.min_lease_s <= lease <= cfg.max_lease_s:
            raise CommandError(
                ErrorCode.OUT_OF_RANGE,
                f"lease_s {lease:g} is out of bounds: between {cfg.min_lease_s:g} and "
                f"{cfg.max_lease_s:g} s",
            )
        if req.session is not None and not protocol.valid_id(req.session):
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                "session: expected 1-64 letters, digits, '-' or '_', starting with a letter or "
                "digit",
            )
        hub, served, note = self._pick_hub(camera, req.stream)
        state = hub.state()
        if state.silent_s is None or state.silent_s > cfg.camera_down_after_s:
            since = "never sent a packet" if state.silent_s is None else (
                f"sent no packet for {state.silent_s:.0f} s")  # fmt: skip
            raise CommandError(
                ErrorCode.CAMERA_DOWN, f"camera {req.camera} is down ({since}); try again later"
            )
        if not state.has_keyframe or state.stream is None:
            raise CommandError(
                ErrorCode.CAMERA_DOWN,
                f"camera {req.camera} has sent no keyframe yet; try again in a few seconds",
            )
        if state.stream.codec not in LIVE_CODECS:
            raise CommandError(
                ErrorCode.NOT_SUPPORTED,
                f"camera {req.camera} sends {state.stream.codec}; live needs H.264 or H.265",
            )
        session_id = req.session or uuid.uuid4().hex[:16]
        owner = ctx.principal  # the verified operator: their quota, and only they renew or stop
        topic = self.link.topics.live(req.camera, session_id)
        with self._lock:
            if session_id in self._sessions:
                raise CommandError(
                    ErrorCode.BAD_REQUEST, f"session {session_id} already exists; choose another"
                )
            on_camera = sum(1 for s in self._sessions.values() if s.camera == req.camera)
            if on_camera >= cfg.max_sessions_per_camera:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"camera {req.camera} already has {on_camera} live sessions (limit "
                    f"{cfg.max_sessions_per_camera}); stop one first",
                )
            if len(self._sessions) >= cfg.max_sessions:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"this gateway already has {len(self._sessions)} live sessions (limit "
                    f"{cfg.max_sessions}); stop one first",
                )
            mine = sum(1 for s in self._sessions.values() if s.owner == owner)
            if mine >= cfg.max_sessions_per_operator:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"{owner} already holds {mine} live sessions on this gateway (limit "
                    f"{cfg.max_sessions_per_operator} per operator); stop one first",
                )
            if cfg.max_bytes_per_s is not None:
                used = sum(s.hub.state().bytes_per_s for s in self._sessions.values())
                if used + state.bytes_per_s > cfg.max_bytes_per_s:
                    raise CommandError(
                        ErrorCode.LIMIT_REACHED,
                        f"live bandwidth cap reached: {used / 1000:.0f} kB/s in use + "
                        f"{state.bytes_per_s / 1000:.0f} kB/s for camera {req.camera} > "
                        f"{cfg.max_bytes_per_s / 1000:.0f} kB/s",
                    )
            session = LiveSession(
                id=session_id,
                camera=req.camera,
                stream=served,
                hub=hub,
                link=self.link,
                topic=topic,
                client_id=ctx.client_id,
                operator=ctx.operator,
                owner=owner,
                lease_s=lease,
                fragment_s=cfg.fragment_s,
                expires_mono=time.monotonic() + lease,
            )
            self._sessions[session_id] = session
        session.start()
        log.info(
            "live %s: started for %s (operator %s) on camera %s/%s, lease %g s, topic %s",
            session_id, ctx.client_id, ctx.operator or "unknown", req.camera, served, lease, topic,
        )  # fmt: skip
        info = state.stream
        reply: dict[str, Any] = {
            "session": session_id,
            "topic": topic,
            "camera": req.camera,
            "stream": served,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "lease_s": lease,
            "expires": iso_ms(time.time() + lease),
            "init": f"{session_id}.1",
            "fragment_s": cfg.fragment_s,
            "gop_cached_s": round(state.gop_s, 3),
            "content_type": CONTENT_TYPE,
        }
        if note:
            reply["note"] = note
        return reply

    def handle_renew(self, ctx: CommandContext, req: LiveRenew) -> dict[str, Any]:
        session = self._owned(ctx, req.session, "renew")
        lease = session.lease_s if req.lease_s is None else req.lease_s
        cfg = self.config
        if not cfg.min_lease_s <= lease <= cfg.max_lease_s:
            raise CommandError(
                ErrorCode.OUT_OF_RANGE,
                f"lease_s {lease:g} is out of bounds: between {cfg.min_lease_s:g} and "
                f"{cfg.max_lease_s:g} s",
            )
        with self._lock:
            if req.session not in self._sessions:
                raise CommandError(
                    ErrorCode.UNKNOWN_SESSION, f"live session {req.session} has just ended"
                )
            session.lease_s = lease
            session.expires_mono = time.monotonic() + lease
        return {"session": session.id, "lease_s": lease, "expires": iso_ms(time.time() + lease)}

    def handle_stop(self, ctx: CommandContext, req: LiveStop) -> dict[str, Any]:
        session = self._owned(ctx, req.session, "stop")
        ended = self._end(session.id, "stopped")
        if ended is None:
            raise CommandError(
                ErrorCode.UNKNOWN_SESSION, f"live session {req.session} has just ended"
            )
        return {"session": ended.id, "bytes": ended.stats.bytes, "fragments": ended.stats.fragments}

    def _owned(self, ctx: CommandContext, session_id: str, verb: str) -> LiveSession:
        session = self.session(session_id)
        if session is None:
            raise CommandError(
                ErrorCode.UNKNOWN_SESSION,
                f"no live session {session_id} (never started, stopped, or its lease passed)",
            )
        if session.owner != ctx.principal:
            raise CommandError(
                ErrorCode.FORBIDDEN,
                f"live session {session_id} belongs to another operator; only they may {verb} it",
            )
        return session

    def _pick_hub(self, camera: CameraConfig, wanted: str) -> tuple[LiveHub, str, str | None]:
        """``stream: sub`` is served from the sub-stream when the camera has one that is
        flowing; otherwise it falls back to the main stream (and the reply says so), because
        an operator asking for a picture should get one: the bandwidth cap still applies."""
        main = self.hubs[camera.id]
        if wanted != "sub":
            return main, "main", None
        sub = self.sub_hubs.get(camera.id)
        if camera.sub_url is None or sub is None:
            return main, "main", f"camera {camera.id} has no sub-stream; serving the main stream"
        state = sub.state()
        if (
            state.silent_s is None
            or state.silent_s > self.config.camera_down_after_s
            or not state.has_keyframe
        ):
            return (
                main,
                "main",
                f"sub-stream of {camera.id} is not flowing; serving the main stream",
            )
        return sub, "sub", None

    # -- ending ----------------------------------------------------------------------------

    def _end(self, session_id: str, reason: str) -> LiveSession | None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        session.stop()
        try:
            session.publish_end(reason)
        except Exception:  # the audit record matters more than the end marker
            log.exception("live %s: could not publish the end marker", session_id)
        end = time.time()
        self.audit.record(
            "live.session",
            session=session.id,
            operator=session.operator,
            client_id=session.client_id,
            camera=session.camera,
            stream=session.stream,
            start=iso_ms(session.started_wall),
            end=iso_ms(end),
            duration_s=round(end - session.started_wall, 3),
            bytes=session.stats.bytes,
            fragments=session.stats.fragments,
            reason=reason,
        )
        log.info(
            "live %s: ended (%s) on camera %s after %.1f s, %d bytes in %d fragments",
            session.id, reason, session.camera, end - session.started_wall, session.stats.bytes,
            session.stats.fragments,
        )  # fmt: skip
        return session

    def expire(self, now_mono: float | None = None) -> list[str]:
        """End every session whose lease has passed; returns their ids."""
        now = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            due = [s.id for s in self._sessions.values() if s.expires_mono <= now]
        for session_id in due:
            self._end(session_id, "lease_expired")
        return due

    def _tick(self) -> None:
        while not self._closing.wait(0.2):
            try:
                self.expire()
            except Exception:
                log.exception("live: lease check failed; retrying")

    def _on_reconnect(self) -> None:
        # On the network thread: publishing is non-blocking in paho.
        for session in self.sessions():
            session.republish_init()
