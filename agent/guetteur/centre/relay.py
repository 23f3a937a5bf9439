"""Live views relayed to browsers: one gateway live session per view, fMP4 fragments fanned out
to the view's WebSockets.

    gateway ──MQTT cam/{cam}/live/{session}──► paho thread: StreamAssembler (decodable order)
        ──call_soon_threadsafe──► event loop: the session's last init + GOP cache, then each
        viewer's bounded queue ──► WebSocket (binary: init segment, then fragments)

Why relay through the server rather than let browsers subscribe to the broker's WebSocket
listener: the browser then needs no broker credentials (the centre's sessions and roles are the
only way in), the gateway's live session is signed by the server for the operator, and the
server knows when the view ends to register it.

Leases: the client renews its view (``renew``) within ``lease_s``; the server renews the
gateway's lease every third of it while the client does, and stops the gateway session when the
client stops, its lease lapses, or the gateway ends it. The register holds the start (the signed
``live.start`` command) and the end (``live.end``: start, end, duration, reason) of every view.

A viewer whose queue is full (a slow link) loses fragments up to the next keyframe, never the
whole session; a new viewer gets the init segment and the GOP in progress, so it decodes at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from guetteur.centre.accounts import Principal
from guetteur.centre.client import CentreClient
from guetteur.centre.commands import Commander, CommandFailed
from guetteur.centre.config import LiveConfig
from guetteur.centre.register import Entry, Register
from guetteur.centre.tools.live import Output, StreamAssembler
from guetteur.timeutil import iso_ms
from guetteur.uplink.mqttutil import user_properties
from guetteur.uplink.protocol import Topics

log = logging.getLogger(__name__)

T = TypeVar("T")
GOP_CACHE_MAX = 512  # fragments kept for a viewer who joins mid-GOP


@dataclass(eq=False)
class Viewer:
    queue: asyncio.Queue[Output | None]
    need_key: bool = True
    dropped: int = 0


@dataclass(eq=False)
class RelaySession:
    id: str
    who: Principal
    gateway: str
    camera: str
    stream: str
    topic: str
    lease_s: float
    started: float = field(default_factory=time.time)
    client_expires: float = 0.0
    next_gateway_renew: float = 0.0
    gateway_lease_s: float = 30.0
    reply: dict[str, Any] = field(default_factory=dict)
    assembler: StreamAssembler = field(default_factory=StreamAssembler)
    lock: threading.Lock = field(default_factory=threading.Lock)
    init: Output | None = None
    gop: list[Output] = field(default_factory=list)
    viewers: set[Viewer] = field(default_factory=set)
    ended: str | None = None
    fragments: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "gateway": self.gateway,
            "camera": self.camera,
            "stream": self.stream,
            "operator": self.who.username,
            "lease_s": self.lease_s,
            "started": iso_ms(self.started),
            "codec": self.reply.get("codec"),
            "width": self.reply.get("width"),
            "height": self.reply.get("height"),
            "ws": f"/api/live/{self.id}/ws",
        }


class LiveRelay:
    def __init__(
        self,
        commander: Commander,
        client: CentreClient,
        register: Register,
        config: LiveConfig,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commander = commander
        self.client = client
        self.register = register
        self.config = config
        self.loop = loop
        self.executor = executor
        self.clock = clock
        self.sessions: dict[str, RelaySession] = {}

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.loop.run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs)
        )

    # -- the API's verbs -------------------------------------------------------------------------

    async def start(self, who: Principal, gateway: str, camera: str, stream: str) -> RelaySession:
        if len(self.sessions) >= self.config.max_sessions:
            raise CommandFailed(
                "limit_reached",
                f"Trop de vues en direct / this server relays {len(self.sessions)} live views "
                "already; close one",
                429,
            )
        sid = uuid.uuid4().hex[:16]
        topic = Topics(self.client.root, gateway).live(camera, sid)
        session = RelaySession(sid, who, gateway, camera, stream, topic, self.config.lease_s)
        # subscribe first: the gateway sends its cached GOP as soon as it accepts
        self.client.subscribe(topic, functools.partial(self._on_message, session), qos=1)
        try:
            reply = await self._run(
                self.commander.send,
                who,
                gateway,
                "live.start",
                {
                    "camera": camera,
                    "stream": stream,
                    "lease_s": self.config.lease_s,
                    "session": sid,
                },
                camera=camera,
                session_id=sid,
            )
        except BaseException:
            self.client.unsubscribe(topic)
            raise
        session.reply = reply
        session.gateway_lease_s = float(reply.get("lease_s") or self.config.lease_s)
        now = self.clock()
        session.client_expires = now + session.lease_s
        session.next_gateway_renew = now + session.gateway_lease_s / 3
        self.sessions[sid] = session
        log.info("live %s: %s watches %s/%s (%s)", sid, who.username, gateway, camera, stream)
        return session

    def get(self, who: Principal, sid: str) -> RelaySession:
        session = self.sessions.get(sid)
        if session is None or session.ended:
            raise CommandFailed(
                "unknown_session", f"Vue inconnue ou terminée / no live view {sid}", 404
            )
        if session.who.username != who.username:
            raise CommandFailed("forbidden", "Cette vue appartient à un autre opérateur / "
                                "this live view belongs to another operator", 403)  # fmt: skip
        return session

    def renew(self, who: Principal, sid: str) -> RelaySession:
        session = self.get(who, sid)
        session.client_expires = self.clock() + session.lease_s
        return session

    async def stop(self, who: Principal, sid: str) -> None:
        await self._end(self.get(who, sid), "stopped", tell_gateway=True)

    def attach(self, who: Principal, sid: str) -> Viewer:
        session = self.get(who, sid)
        viewer = Viewer(asyncio.Queue(self.config.client_queue))
        if session.init is not None:
            viewer.queue.put_nowait(session.init)
            for out in session.gop[: self.config.client_queue - 1]:
                viewer.queue.put_nowait(out)
            viewer.need_key = not session.gop
        session.viewers.add(viewer)
        return viewer

    def detach(self, sid: str, viewer: Viewer) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.viewers.discard(viewer)

    # -- fragments (paho thread → loop) ----------------------------------------------------------

    def _on_message(self, session: RelaySession, msg: mqtt.MQTTMessage) -> None:
        with session.lock:
            outputs = session.assembler.handle(user_properties(msg), bytes(msg.payload))
            ended = session.assembler.ended
        for out in outputs:
            self.loop.call_soon_threadsafe(self._dispatch, session, out)
        if ended:
            self.loop.call_soon_threadsafe(self._gateway_ended, session, ended)

    def _dispatch(self, session: RelaySession, out: Output) -> None:
        if out.kind == "init":
            session.init, session.gop = out, []
        else:
            session.fragments += 1
            if out.key:
                session.gop = []
            if len(session.gop) < GOP_CACHE_MAX:
                session.gop.append(out)
        for viewer in list(session.viewers):
            if out.kind == "data" and viewer.need_key and not out.key:
                continue
            try:
                viewer.queue.put_nowait(out)
                if out.kind == "data":
                    viewer.need_key = False
            except asyncio.QueueFull:
                viewer.need_key = True  # resume at the next keyframe: what follows decodes
                viewer.dropped += 1

    def _gateway_ended(self, session: RelaySession, reason: str) -> None:
        if not session.ended:
            self.loop.create_task(self._end(session, f"gateway: {reason}", tell_gateway=False))

    # -- leases and ends -------------------------------------------------------------------------

    async def tick(self) -> None:
        """Once a second: end views whose client lease lapsed; renew gateway leases."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if session.ended:
                continue
            if now > session.client_expires:
                await self._end(session, "lease expired", tell_gateway=True)
            elif now >= session.next_gateway_renew:
                session.next_gateway_renew = now + session.gateway_lease_s / 3
                try:
                    await self._run(
                        self.commander.send,
                        session.who,
                        session.gateway,
                        "live.renew",
                        {"session": session.id, "lease_s": session.gateway_lease_s},
                        camera=session.camera,
                        session_id=session.id,
                        record=False,
                    )
                except CommandFailed as exc:
                    if exc.code == "timeout":  # two more chances within the lease
                        session.next_gateway_renew = now + 2.0
                    else:
                        await self._end(session, f"renewal refused: {exc.code}", tell_gateway=False)

    async def _end(self, session: RelaySession, reason: str, tell_gateway: bool) -> None:
        if session.ended:
            return
        session.ended = reason
        self.sessions.pop(session.id, None)
        self.client.unsubscribe(session.topic)
        for viewer in list(session.viewers):
            try:
                viewer.queue.put_nowait(None)
            except asyncio.QueueFull:
                viewer.queue.get_nowait()
                viewer.queue.put_nowait(None)
        if tell_gateway:
            try:
                await self._run(
                    self.commander.send,
                    session.who,
                    session.gateway,
                    "live.stop",
                    {"session": session.id},
                    camera=session.camera,
                    session_id=session.id,
                    record=False,
                )
            except CommandFailed as exc:
                log.warning(
                    "live %s: stop not confirmed by %s: %s", session.id, session.gateway, exc
                )
        end = time.time()
        await self._run(
            self.register.record,
            Entry(
                "live.end",
                operator=session.who.username,
                role=session.who.role,
                gateway=session.gateway,
                camera=session.camera,
                session_id=session.id,
                outcome=reason[:64],
                detail={
                    "start": iso_ms(session.started),
                    "end": iso_ms(end),
                    "duration_s": round(end - session.started, 1),
                    "stream": session.stream,
                    "fragments": session.fragments,
                },
            ),
        )
        log.info("live %s of %s/%s ended: %s", session.id, session.gateway, session.camera, reason)

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self._end(session, "server stopping", tell_gateway=True)
