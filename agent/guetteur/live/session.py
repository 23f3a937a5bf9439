"""One viewer's live session: a thread that muxes the hub's packets into fMP4 and publishes them
on the session topic ``{root}/{gw}/cam/{cam}/live/{session}``.

- **Messages** on the session topic (MQTT 5 user properties say what each one is):

  - ``kind=init``: the init segment (ftyp+moov), QoS 1 and **retained**, with ``init`` = the
    init segment id (``{session}.{n}``), ``codec``, ``width``, ``height``;
  - ``kind=fragment``: one CMAF fragment (one or more moof+mdat pairs, about
    ``LiveConfig.fragment_s`` long, always cut before a keyframe), QoS 0, with ``init`` (the
    init segment it needs), ``seq`` (per session, +1 per fragment), ``key`` (``1`` when it
    starts with a keyframe: where a late or interrupted viewer may start decoding), ``t``
    (UTC ISO 8601 ms of its first frame) and ``dur`` (seconds);
  - ``kind=end``: an empty retained payload (it also deletes the retained init segment), with
    ``reason`` (``stopped``, ``lease_expired``, ``shutdown``, ``error``).

- **Late subscribers** get the init segment from the broker because it is retained: no
  periodic republishing (that would cost bandwidth on a metered link for every session, all
  the time), and a subscriber joining at any moment, or re-subscribing after a reconnection,
  has the right init segment before the next fragment. It is published with QoS 1 so that a
  link drop cannot lose the one message without which nothing decodes; it is published again
  after every link reconnection (the broker may have lost it). Every fragment names its init
  segment id, so a viewer can tell fragments of a new stream epoch (the camera changed codec
  or size) and must wait for a ``key=1`` fragment after a ``seq`` gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import av

from guetteur.live.fmp4 import CONTENT_TYPE, Fragment, Repackager, same_epoch
from guetteur.live.hub import LiveHub
from guetteur.media.types import EncodedPacket
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

_MAX_QUEUED_PACKETS = 1500  # a minute at 25 fps: beyond it a session restarts at a keyframe


class SessionLink(Protocol):
    """What a live session needs of guetteur.uplink.link.Link: publishing bytes as they are."""

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        user_props: dict[str, str] | None = None,
    ) -> Any: ...


@dataclass
class SessionStats:
    bytes: int = 0  # published: init segments and fragments
    init_bytes: int = 0  # of which init segments
    packet_bytes: int = 0  # camera bytes in the published fragments (bytes / this = overhead)
    fragments: int = 0
    inits: int = 0
    skipped_fragments: int = 0
    first_fragment_mono: float | None = None


@dataclass
class LiveSession:
    """One viewer's session. Its thread muxes and publishes; the service ends it."""

    id: str
    camera: str
    stream: str  # "main" or "sub": what is actually served
    hub: LiveHub
    link: SessionLink
    topic: str
    client_id: str
    operator: str | None
    lease_s: float
    fragment_s: float
    expires_mono: float
    started_wall: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    stats: SessionStats = field(default_factory=SessionStats)
    init_id: str | None = None
    owner: str = ""  # who may renew and stop it: the verified operator (else the client id)

    def __post_init__(self) -> None:
        self.owner = self.owner or self.client_id
        self._queue: deque[EncodedPacket] = deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"live-{self.camera}-{self.id[:8]}", daemon=True
        )
        self._repack: Repackager | None = None
        self._epoch = 0
        self._init_payload: bytes | None = None
        self._init_props: dict[str, str] = {}
        self._need_key = False
        self._seq = 0
        self._publish_lock = threading.Lock()
        self._overflowed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        backlog = self.hub.attach(self._deliver)
        with self._wake:
            self._queue.extendleft(reversed(backlog))
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.hub.detach(self._deliver)
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._repack is not None:
            self._repack.close()
            self._repack = None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _deliver(self, packet: EncodedPacket) -> None:  # source thread: keep it cheap
        with self._wake:
            if len(self._queue) >= _MAX_QUEUED_PACKETS:
                # the session thread is starved: drop the backlog, restart at a keyframe
                self._queue.clear()
                self._overflowed = True
            self._queue.append(packet)
            self._wake.notify()

    # -- the session thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._queue:
                    self._wake.wait(0.5)
                batch = list(self._queue)
                self._queue.clear()
                overflowed, self._overflowed = self._overflowed, False
            if overflowed and self._repack is not None:
                log.warning(
                    "live %s: camera %s: session fell %d packets behind (CPU starved); "
                    "restarting at the next keyframe",
                    self.id, self.camera, _MAX_QUEUED_PACKETS,
                )  # fmt: skip
                self._repack.close()
                self._repack = None
            for packet in batch:
                if self._stop.is_set():
                    return
                self._process(packet)
            if self._seq == 0 and self._repack is not None:
                # Caught up with the cached GOP: send what is muxed at once, even if shorter
                # than fragment_s (a GOP that just began would otherwise hold the first
                # picture back until the camera has filled a whole fragment).
                first = self._repack.flush()
                if first is not None:
                    self._publish_fragment(first)

    def _process(self, packet: EncodedPacket) -> None:
        repack = self._repack
        if repack is None or not same_epoch(repack.info, packet.stream):
            if not packet.keyframe:
                return  # a new epoch starts on a keyframe
            if repack is not None:
                repack.close()
                log.info(
                    "live %s: camera %s changed stream format (%s %dx%d); new init segment",
                    self.id, self.camera, packet.stream.codec, packet.stream.width,
                    packet.stream.height,
                )  # fmt: skip
            try:
                repack = Repackager(packet.stream, self.fragment_s)
            except (ValueError, av.FFmpegError) as exc:
                log.error("live %s: camera %s cannot be streamed: %s", self.id, self.camera, exc)
                self._repack = None
                return
            self._repack = repack
            self._epoch += 1
            self.init_id = f"{self.id}.{self._epoch}"
        try:
            fragments = repack.push(packet)
        except (ValueError, av.FFmpegError) as exc:
            log.warning(
                "live %s: camera %s packet could not be repackaged (%s); restarting at the next "
                "keyframe with a new init segment",
                self.id, self.camera, exc,
            )  # fmt: skip
            repack.close()
            self._repack = None
            return
        if repack.init_segment is not None and self._init_payload is not repack.init_segment:
            self._publish_init(repack)
        for frag in fragments:
            self._publish_fragment(frag)

    def _publish_init(self, repack: Repackager) -> None:
        assert repack.init_segment is not None and self.init_id is not None
        info = repack.info
        with self._publish_lock:
            self._init_payload = repack.init_segment
            self._init_props = {
                "kind": "init",
                "session": self.id,
                "init": self.init_id,
                "codec": info.codec,
                "width": str(info.width),
                "height": str(info.height),
            }
        self.republish_init()
        self.stats.inits += 1

    def republish_init(self) -> None:
        """(Re)publish the retained init segment: at each new epoch and after a reconnection."""
        with self._publish_lock:
            payload, props = self._init_payload, dict(self._init_props)
        if payload is None:
            return
        self.link.publish_raw(
            self.topic, payload, qos=1, retain=True, content_type=CONTENT_TYPE, user_props=props
        )
        self.stats.bytes += len(payload)
        self.stats.init_bytes += len(payload)

    def _publish_fragment(self, frag: Fragment) -> None:
        if self._need_key and not frag.keyframe:
            self.stats.skipped_fragments += 1
            return
        self._seq += 1
        props = {
            "kind": "fragment",
            "session": self.id,
            "init": self.init_id or "",
            "seq": str(self._seq),
            "key": "1" if frag.keyframe else "0",
            "t": iso_ms(frag.wallclock),
            "dur": f"{frag.duration_s:.3f}",
        }
        info = self.link.publish_raw(
            self.topic, frag.payload, qos=0, content_type=CONTENT_TYPE, user_props=props
        )
        if getattr(info, "rc", 0) != 0:
            # not sent (link down): the viewer would miss references; resume at a keyframe
            self._need_key = True
            self.stats.skipped_fragments += 1
            return
        self._need_key = False
        self.stats.bytes += len(frag.payload)
        self.stats.packet_bytes += frag.camera_bytes
        self.stats.fragments += 1
        if self.stats.first_fragment_mono is None:
            self.stats.first_fragment_mono = time.monotonic()

    def publish_end(self, reason: str) -> None:
        """Empty retained message: deletes the retained init and tells viewers why it ended."""
        self.link.publish_raw(
            self.topic,
            b"",
            qos=1,
            retain=True,
            content_type=CONTENT_TYPE,
            user_props={"kind": "end", "session": self.id, "reason": reason},
        )
