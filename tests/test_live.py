"""Live streams on demand: fMP4 repackaging, GOP cache, leases, limits, the centre viewer.

Real peers: Mosquitto (``broker``), the GStreamer RTSP server (``rtsp_server``), the real camera
sources, the real Link + CommandDispatcher on the gateway side and the real CentreClient / centre
live tool on the other. Packets for the pure parts are demuxed from ffmpeg-made clips.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import paho.mqtt.client as mqtt
import pytest

from guetteur.centre.client import CentreClient
from guetteur.centre.tools.live import LiveError, LiveViewer, Output, StreamAssembler
from guetteur.config import CameraConfig, LiveConfig, MqttConfig
from guetteur.live.fmp4 import BoxSplitter, Repackager, iter_boxes
from guetteur.live.hub import LiveHub
from guetteur.live.service import LiveService, LiveStart
from guetteur.media.bitstream import annexb_units, nal_type, parameter_set_types, parse_extradata
from guetteur.media.types import AnalyticFrame, EncodedPacket, StreamInfo
from guetteur.sources import CameraStatus, open_source
from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.link import Link
from guetteur.uplink.mqttutil import user_properties
from tests.centre.harness import PASSWORD, Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.media import MediaFactory
from tests.fixtures.publisher import CollectingPublisher
from tests.fixtures.rtsp import RtspServerFactory
from tests.fixtures.waiting import wait_for

GW = "gw1"
REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# packets from real clips
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hevc_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.265 clip (3 s, keyframe every second), made with ffmpeg's libx265."""
    return MediaFactory(tmp_path_factory.mktemp("hevc")).hevc_clip(duration=3.0, size=(320, 180))


def demux(path: Path, framing: str) -> list[EncodedPacket]:
    """Packets of a clip as a source would hand them on.

    ``framing``: ``"mp4"`` length-prefixed with avcC/hvcC extradata (file sources);
    ``"annexb"`` Annex B with in-band parameter sets and no extradata (RTSP without sprop);
    ``"annexb-sprop"`` Annex B whose keyframes lack parameter sets, which only the (Annex B)
    extradata carries (RTSP cameras that send them in the SDP only).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        extradata = bytes(stream.codec_context.extradata or b"")
        bsf = None
        if framing != "mp4":
            bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        raw: list[tuple[bytes, int, int, bool, int]] = []
        for p in container.demux(stream):
            if p.size == 0 or p.dts is None or p.pts is None:
                continue
            meta = (p.pts, p.dts, bool(p.is_keyframe), int(p.duration or 0))
            data = bytes(p) if bsf is None else b"".join(bytes(q) for q in bsf.filter(p))
            raw.append((data, *meta))
        width, height, tb = stream.width, stream.height, stream.time_base
        assert tb is not None
    sets_types = parameter_set_types(codec)
    info_extradata: bytes | None = extradata if framing == "mp4" else None
    if framing == "annexb-sprop":
        first = annexb_units(raw[0][0])
        sets = [u for u in first if nal_type(u, codec) in sets_types]
        info_extradata = b"".join(b"\x00\x00\x00\x01" + u for u in sets)
        stripped: list[tuple[bytes, int, int, bool, int]] = []
        for data, pts, dts, key, dur in raw:
            units = [u for u in annexb_units(data) if nal_type(u, codec) not in sets_types]
            stripped.append((b"".join(b"\x00\x00\x00\x01" + u for u in units), pts, dts, key, dur))
        raw = stripped
    info = StreamInfo(codec, width, height, tb, 25.0, info_extradata)
    now = time.time()
    return [
        EncodedPacket("cam1", data, pts, dts, key, now + i / 25, info, dur)
        for i, (data, pts, dts, key, dur) in enumerate(raw)
    ]


def decode_all(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), mode="r") as container:
        return list(container.decode(video=0))


# ----------------------------------------------------------------------------------------------
# pure parts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("framing", ["mp4", "annexb", "annexb-sprop"])
def test_repackaging_decodes_from_first_byte(
    codec: str, framing: str, media: MediaFactory, hevc_clip: Path
) -> None:
    clip = (
        media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)) if codec == "h264" else hevc_clip
    )
    packets = demux(clip, framing)
    if framing == "annexb-sprop":  # the test input really lacks in-band parameter sets
        assert not any(nal_type(u, codec) in parameter_set_types(codec)
                       for u in annexb_units(packets[0].data))  # fmt: skip
    repack = Repackager(packets[0].stream, fragment_s=0.5)
    fragments = [f for p in packets for f in repack.push(p)]
    assert repack.init_segment is not None
    assert [k for k, _ in iter_boxes(repack.init_segment)] == ["ftyp", "moov"]
    # keyframe every 25 frames, 0.5 s target at 25 fps: 13 + 12 frames per GOP
    assert [f.frames for f in fragments[:4]] == [13, 12, 13, 12]
    assert [f.keyframe for f in fragments[:4]] == [True, False, True, False]
    assert all(0.0 < f.duration_s <= 0.52 for f in fragments)
    frames = decode_all(repack.init_segment + b"".join(f.payload for f in fragments))
    written = sum(f.frames for f in fragments)
    assert len(frames) == written >= len(packets) - 13  # only the last, unfinished one is held
    assert frames[0].key_frame
    assert (frames[0].width, frames[0].height) == (320, 180)
    # never re-encoded: every sample is the camera's slice data, byte for byte
    first_slice = max(annexb_units(demux(clip, "annexb")[0].data), key=len)
    assert first_slice in fragments[0].payload
    repack.close()


def test_extradata_parsing_matches_in_band_parameter_sets(
    media: MediaFactory, hevc_clip: Path
) -> None:
    for clip, codec in ((media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)), "h264"),
                        (hevc_clip, "hevc")):  # fmt: skip
        mp4 = demux(clip, "mp4")
        bitstream = parse_extradata(mp4[0].stream.extradata, codec)
        assert bitstream.length_size == 4
        in_band = [u for u in annexb_units(demux(clip, "annexb")[0].data)
                   if nal_type(u, codec) in parameter_set_types(codec)]  # fmt: skip
        assert list(bitstream.parameter_sets) == in_band
    with pytest.raises(ValueError, match="too short"):
        parse_extradata(b"\x01\x64", "h264")


def test_box_splitter_reassembles_any_cut(media: MediaFactory) -> None:
    packets = demux(media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)), "mp4")
    repack = Repackager(packets[0].stream, 0.5)
    frags = [f for p in packets for f in repack.push(p)]
    assert repack.init_segment is not None
    data = repack.init_segment + b"".join(f.payload for f in frags)
    splitter = BoxSplitter()
    boxes: list[tuple[str, bytes]] = []
    for i in range(0, len(data), 777):
        boxes += splitter.feed(data[i : i + 777])
    assert b"".join(b for _, b in boxes) == data
    assert [k for k, _ in boxes[:4]] == ["ftyp", "moov", "moof", "mdat"]
    with pytest.raises(ValueError, match="invalid MP4 box size"):
        BoxSplitter().feed(b"\x00\x00\x00\x04abcd")


def test_hub_keeps_last_gop_and_hands_over_without_gap(media: MediaFactory) -> None:
    packets = demux(media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)), "mp4")
    hub = LiveHub("cam1")
    assert hub.state().silent_s is None and not hub.state().has_keyframe
    for p in packets[:40]:
        hub.on_packet(p)
    got: list[EncodedPacket] = []
    backlog = hub.attach(got.append)
    assert backlog[0] is packets[25] and backlog[-1] is packets[39]  # since the last keyframe
    for p in packets[40:60]:
        hub.on_packet(p)
    assert backlog + got == packets[25:60]
    state = hub.state()
    assert state.has_keyframe and state.gop_frames == 10  # keyframes at 0, 25, 50
    assert state.listeners == 1 and state.silent_s is not None and state.silent_s < 1
    hub.detach(got.append)
    hub.on_packet(packets[60])
    assert got[-1] is packets[59]
    # a GOP bigger than the cap is dropped: no instant start until the next keyframe
    small = LiveHub("cam1", max_gop_bytes=len(packets[0].data) + 10)
    for p in packets[:5]:
        small.on_packet(p)
    assert not small.state().has_keyframe
    small.on_packet(packets[25])
    assert small.state().has_keyframe


def test_assembler_orders_skips_and_waits_for_init() -> None:
    a = StreamAssembler()
    frag = lambda seq, key, init="s.1": {  # noqa: E731
        "kind": "fragment",
        "init": init,
        "seq": str(seq),
        "key": "1" if key else "0",
    }
    assert a.handle(frag(1, True), b"F1") == []  # overtook its init segment: held
    out = a.handle({"kind": "init", "init": "s.1"}, b"INIT")
    assert out == [Output("init", b"INIT", "s.1"), Output("data", b"F1", "s.1")]
    assert a.handle(frag(2, False), b"F2") == [Output("data", b"F2", "s.1")]
    assert a.handle(frag(2, False), b"F2") == []  # duplicate
    assert a.handle(frag(4, False), b"F4") == []  # 3 was lost: wait for a keyframe
    assert a.handle(frag(5, True), b"F5") == [Output("data", b"F5", "s.1")]
    a.handle({"kind": "init", "init": "s.2"}, b"INIT2")
    assert a.handle(frag(6, True, "s.2"), b"G6") == [
        Output("init", b"INIT2", "s.2"), Output("data", b"G6", "s.2")]  # fmt: skip
    a.handle({"kind": "end", "reason": "lease_expired"}, b"")
    assert a.ended == "lease_expired"
    late = StreamAssembler()
    late.handle({"kind": "init", "init": "s.1"}, b"INIT")
    assert late.handle(frag(7, False), b"F7") == []  # joined mid-GOP: starts at a keyframe
    assert late.handle(frag(8, True), b"F8")[0].kind == "init"


# ----------------------------------------------------------------------------------------------
# gateway harness: real Link + CommandDispatcher + LiveService, real sources
# ----------------------------------------------------------------------------------------------


class HubSink:
    """The SourceSink the gateway wires: packets to the live hubs, the rest ignored here."""

    def __init__(self, *hubs: LiveHub) -> None:
        self.hubs = hubs

    def on_packet(self, packet: EncodedPacket) -> None:
        for hub in self.hubs:
            hub.on_packet(packet)

    def on_frame(self, frame: AnalyticFrame) -> None:
        pass

    def on_status(self, status: CameraStatus) -> None:
        pass


@dataclass
class Gateway:
    link: Link
    service: LiveService
    audit: CollectingPublisher
    hubs: dict[str, LiveHub]


@pytest.fixture
def gateway(broker: MosquittoBroker) -> Iterator[Callable[..., Gateway]]:
    made: list[tuple[Gateway, threading.Event, list[threading.Thread]]] = []

    def make(cameras: list[CameraConfig], live: LiveConfig, feeds: dict[str, str] | None = None,
             sub_hubs: dict[str, LiveHub] | None = None) -> Gateway:  # fmt: skip
        """``feeds``: hub name → camera id whose real source feeds it (default: itself)."""
        collect = CollectingPublisher()
        audit = AuditTrail(collect, GW)
        dispatcher = CommandDispatcher(audit, rate_per_s=50, burst=100)
        link = Link(MqttConfig(url=broker.url), GW, dispatcher)
        hubs = {c.id: LiveHub(c.id) for c in cameras}
        service = LiveService(live, cameras, link, audit, hubs, sub_hubs or {})
        service.register(dispatcher)
        service.start()
        link.start()
        assert link.wait_subscribed(5), "gateway link did not connect to the test broker"
        stop = threading.Event()
        threads = []
        feeds = feeds if feeds is not None else {c.id: c.id for c in cameras}
        by_id = {c.id: c for c in cameras}
        for source_cam in sorted(set(feeds.values())):
            targets = [hubs[h] for h, src in feeds.items() if src == source_cam]
            source = open_source(by_id[source_cam], backoff=(0.2, 1.0))
            t = threading.Thread(target=source.run, args=(HubSink(*targets), stop), daemon=True)
            t.start()
            threads.append(t)
        gw = Gateway(link, service, collect, hubs)
        made.append((gw, stop, threads))
        return gw

    yield make
    for gw, stop, threads in made:
        gw.service.close()
        stop.set()
        for t in threads:
            t.join(5)
        gw.link.stop()


def wait_keyframe(hub: LiveHub, timeout: float = 15.0) -> None:
    wait_for(lambda: hub.state().has_keyframe, timeout, f"a keyframe from camera {hub.camera}")


class TopicRecorder:
    """A plain MQTT subscriber recording every message of a topic with its arrival time."""

    def __init__(self, client: CentreClient, topic: str) -> None:
        self.messages: list[tuple[float, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        client.subscribe(topic, self._on, qos=1)

    def _on(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), user_properties(msg), bytes(msg.payload)))

    def kinds(self, kind: str) -> list[tuple[float, dict[str, str], bytes]]:
        with self._lock:
            return [m for m in self.messages if m[1].get("kind") == kind]


# ----------------------------------------------------------------------------------------------
# acceptance: RTSP camera with a 4 s GOP
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rtsp_camera_instant_start_lease_expiry_and_limits(
    broker: MosquittoBroker,
    rtsp_server: RtspServerFactory,
    media: MediaFactory,
    gateway: Callable[..., Gateway],
) -> None:
    clip = media.h264_clip(duration=12.0, fps=25.0, gop_s=4.0, size=(640, 360))
    server = rtsp_server(file=clip)
    cams = [CameraConfig(id="cam1", url=server.url), CameraConfig(id="cam2", url=server.url)]
    live = LiveConfig(
        min_lease_s=1.0,
        max_sessions_per_camera=2,
        max_sessions=3,
        max_sessions_per_operator=3,  # one client plays every viewer here
        fragment_s=0.5,
    )
    gw = gateway(cams, live, feeds={"cam1": "cam1", "cam2": "cam1"})
    wait_keyframe(gw.hubs["cam1"])
    time.sleep(1.0)  # be mid-GOP: the next camera keyframe is seconds away
    assert gw.hubs["cam1"].state().gop_s > 0.5

    with CentreClient(broker.url) as centre, CentreClient(broker.url) as watcher:
        viewer = LiveViewer(centre, GW, "cam1", lease_s=30.0, operator="alice")
        t0 = time.monotonic()
        reply = viewer.start()
        assert reply["ok"] and reply["codec"] == "h264" and reply["gop_cached_s"] > 0.5
        assert (reply["width"], reply["height"]) == (640, 360)
        assert reply["topic"] == f"guetteur/v1/{GW}/cam/cam1/live/{viewer.session}"
        out = io.BytesIO()
        for item in viewer.outputs(2.5):
            out.write(item.data)
        assert viewer.first_output_mono is not None
        first_s = viewer.first_output_mono - t0
        assert first_s < 1.0, f"first fragment after {first_s:.2f} s"
        frames = decode_all(out.getvalue())  # from its first byte
        assert frames[0].key_frame and len(frames) >= 40
        assert (frames[0].width, frames[0].height) == (640, 360)

        # over the limits: 2 per camera, 3 per gateway
        second = LiveViewer(centre, GW, "cam1", lease_s=30.0)
        second.start()
        with pytest.raises(LiveError) as refused:
            LiveViewer(centre, GW, "cam1", lease_s=30.0).start()
        assert refused.value.code == "limit_reached" and "cam1" in refused.value.message
        wait_keyframe(gw.hubs["cam2"])
        LiveViewer(centre, GW, "cam2", lease_s=30.0).start()
        with pytest.raises(LiveError) as refused:
            LiveViewer(centre, GW, "cam2", lease_s=30.0).start()
        assert refused.value.code == "limit_reached" and "gateway" in refused.value.message
        assert len(gw.service.sessions()) == 3
        assert viewer.stop() is not None and second.stop() is not None

        # no renewal: publishing stops within lease + 2 s, and the viewer is told
        lapsing = LiveViewer(centre, GW, "cam1", lease_s=1.5)
        recorder = TopicRecorder(watcher, lapsing.topic)  # its own client: one callback/topic
        started = time.monotonic()
        lapsing.start()
        wait_for(lambda: bool(recorder.kinds("end")), 1.5 + 3.0, "the end of the lapsed session")
        fragments = recorder.kinds("fragment")
        assert fragments, "the lapsed session published nothing"
        assert fragments[-1][0] - started <= 1.5 + 2.0
        assert recorder.kinds("end")[0][1]["reason"] == "lease_expired"
        time.sleep(1.0)
        assert len(recorder.kinds("fragment")) == len(fragments)  # nothing after the end
        assert lapsing.session not in {s.id for s in gw.service.sessions()}

    # every session leaves an audit record
    records = {r["session"]: r for r in gw.audit.audit_records("live.session")}
    rec = records[viewer.session]
    assert rec["operator"] == "alice" and rec["client_id"].startswith("centre-")
    assert rec["camera"] == "cam1" and rec["reason"] == "stopped" and rec["bytes"] > 10_000
    assert protocol.parse_topic("guetteur/v1", reply["topic"]) is not None
    assert rec["start"] < rec["end"]
    assert records[lapsing.session]["reason"] == "lease_expired"


# ----------------------------------------------------------------------------------------------
# bad input, ownership, renewals, the CLI
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_input_gets_codes_and_changes_nothing(
    broker: MosquittoBroker, media: MediaFactory, gateway: Callable[..., Gateway]
) -> None:
    clip = media.h264_clip(duration=4.0, gop_s=1.0, size=(320, 180))
    cams = [
        CameraConfig(id="cam1", url=f"file:{clip}"),
        CameraConfig(id="dead", url="rtsp://127.0.0.1:9/none", open_timeout_s=0.5),
    ]
    gw = gateway(cams, LiveConfig(min_lease_s=2.0, max_lease_s=60.0), feeds={"cam1": "cam1"})
    wait_keyframe(gw.hubs["cam1"])

    def code(client: CentreClient, verb: str, body: dict[str, Any]) -> str:
        reply = client.request(GW, verb, body)
        assert not reply["ok"], reply
        assert len(reply["error"]["message"]) > 15  # a sentence, not just a code
        return str(reply["error"]["code"])

    with CentreClient(broker.url) as alice, CentreClient(broker.url) as mallory:
        viewer = LiveViewer(alice, GW, "cam1", lease_s=10.0, operator="alice")
        viewer.start()
        session = viewer.session
        before = gw.service.session(session)
        assert before is not None
        expires = before.expires_mono
        assert code(alice, "live.start", {"camera": "nope"}) == "unknown_camera"
        assert code(alice, "live.start", {"camera": "cam1", "lease_s": 0.5}) == "out_of_range"
        assert code(alice, "live.start", {"camera": "cam1", "lease_s": 600}) == "out_of_range"
        assert code(alice, "live.start", {"camera": "cam1", "stream": "hd"}) == "bad_request"
        assert code(alice, "live.start", {"camera": "cam1", "session": "a/b"}) == "bad_request"
        assert code(alice, "live.start", {"camera": "cam1", "session": session}) == "bad_request"
        assert code(alice, "live.start", {"camera": "dead"}) == "camera_down"
        assert code(alice, "live.renew", {"session": "nosuch"}) == "unknown_session"
        assert code(alice, "live.stop", {"session": "nosuch"}) == "unknown_session"
        assert code(alice, "live.renew", {"session": session, "lease_s": 999}) == "out_of_range"
        assert code(mallory, "live.renew", {"session": session}) == "forbidden"
        assert code(mallory, "live.stop", {"session": session}) == "forbidden"
        # nothing else changed: same session, same lease, still publishing
        assert gw.service.session(session) is before and before.expires_mono == expires
        assert [s.id for s in gw.service.sessions()] == [session]
        sent = before.stats.fragments
        wait_for(lambda: before.stats.fragments > sent, 3.0, "more fragments")
        # the owner renews: the lease moves on
        ok = alice.request(GW, "live.renew", {"session": session, "lease_s": 20})
        assert ok["ok"] and ok["lease_s"] == 20 and before.expires_mono > expires
        # a sub-stream request on a camera without one falls back to main, and says so
        sub = alice.request(GW, "live.start", {"camera": "cam1", "stream": "sub", "lease_s": 5})
        assert sub["ok"] and sub["stream"] == "main" and "no sub-stream" in sub["note"]
        assert alice.request(GW, "live.stop", {"session": sub["session"]})["ok"]
        assert viewer.stop() is not None
    assert gw.service.sessions() == []


def test_camera_silent_too_long_is_down_and_bandwidth_cap(media: MediaFactory) -> None:
    packets = demux(media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)), "mp4")

    class Nowhere:
        topics = protocol.Topics("guetteur/v1", GW)

        def publish_raw(self, *args: Any, **kwargs: Any) -> None:
            return None

    hub = LiveHub("cam1")
    for p in packets[:30]:
        hub.on_packet(p)
    ctx = CommandContext("live.start", "r1", "centre-1", None, {})
    cams = [CameraConfig(id="cam1", url="rtsp://127.0.0.1:9/x")]
    capped = LiveService(LiveConfig(max_bytes_per_s=1000), cams, Nowhere(), AuditTrail(CollectingPublisher(), GW),
                         {"cam1": hub})  # fmt: skip
    with pytest.raises(CommandError) as refused:
        capped.handle_start(ctx, LiveStart(camera="cam1"))
    assert refused.value.code == "limit_reached" and "bandwidth" in refused.value.message
    assert capped.sessions() == []
    quiet = LiveService(LiveConfig(camera_down_after_s=0.2), cams, Nowhere(),
                        AuditTrail(CollectingPublisher(), GW), {"cam1": hub})  # fmt: skip
    time.sleep(0.3)
    with pytest.raises(CommandError) as down:
        quiet.handle_start(ctx, LiveStart(camera="cam1"))
    assert down.value.code == "camera_down" and "no packet for" in down.value.message


@pytest.mark.slow
def test_centre_live_cli_writes_playable_file_and_stops_on_sigterm(
    broker: MosquittoBroker,
    media: MediaFactory,
    gateway: Callable[..., Gateway],
    centre_server: Callable[..., Centre],
    tmp_path: Path,
) -> None:
    """`guetteur centre live` through the centre server, which relays the gateway's fMP4."""
    clip = media.h264_clip(duration=4.0, gop_s=1.0, size=(320, 180))
    gw = gateway([CameraConfig(id="cam1", url=f"file:{clip}")], LiveConfig(min_lease_s=1.0))
    gw.link.publish_json(gw.link.topics.status, {"state": "online", "gateway": GW}, retain=True)
    centre = centre_server(broker, live={"lease_s": 5})
    wait_for(lambda: centre.login("op1").ok("GET", "/api/gateways")["gateways"], 10, "gw1 known")
    wait_keyframe(gw.hubs["cam1"])
    out = tmp_path / "live.mp4"
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent"), GUETTEUR_SERVER=centre.url,
               GUETTEUR_USER="op1", GUETTEUR_PASSWORD=PASSWORD)  # fmt: skip
    env.pop("GUETTEUR_TOKEN", None)
    tool = [sys.executable, "-m", "guetteur", "centre", "live", "--gateway", GW, "--camera", "cam1"]
    proc = subprocess.Popen([*tool, "-o", str(out)], stderr=subprocess.PIPE, env=env)
    try:
        # 5 s leases (the view's at the server, the server's at the gateway): still running at
        # 9 s proves both are renewed
        wait_for(lambda: out.exists() and out.stat().st_size > 20_000, 15.0, "the viewer's file")
        time.sleep(9.0)
        assert proc.poll() is None and len(gw.service.sessions()) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    wait_for(lambda: gw.service.sessions() == [], 5, "the gateway's session to stop")
    rec = gw.audit.audit_records("live.session")[0]
    assert rec["reason"] == "stopped" and rec["operator"] == "op1" and rec["bytes"] > 20_000
    frames = decode_all(out.read_bytes())
    assert frames[0].key_frame and len(frames) >= 200  # > 9 s at 25 fps

    # to stdout, piped into a player (ffprobe reading the pipe stands in for ffplay)
    ffprobe = shutil.which("ffprobe")
    assert ffprobe, "ffprobe (Debian ffmpeg) is missing: run `make setup`"
    viewer = subprocess.Popen(
        [*tool, "--duration", "2", "-o", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert viewer.stdout is not None
    probe = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,width", "-of", "csv=p=0", "-"],
        stdin=viewer.stdout, capture_output=True, timeout=20,
    )  # fmt: skip
    viewer.wait(10)
    assert viewer.returncode == 0 and probe.returncode == 0, probe.stderr.decode()
    width, read = (int(x) for x in probe.stdout.decode().strip().split(","))
    assert width == 320 and read >= 40  # 2 s at 25 fps, plus the cached GOP


def feed(hub: LiveHub, packets: list[EncodedPacket], stop: threading.Event, loop: bool) -> None:
    """Hand packets to a hub at 25 fps, as a camera source thread does."""
    while not stop.is_set():
        for p in packets:
            if stop.is_set():
                return
            hub.on_packet(p)
            time.sleep(0.04)
        if not loop:
            return


@pytest.mark.slow
def test_format_change_sends_new_init_and_sub_stream_is_served(
    broker: MosquittoBroker, media: MediaFactory, gateway: Callable[..., Gateway]
) -> None:
    small = demux(media.h264_clip(duration=3.0, gop_s=1.0, size=(320, 180)), "annexb")
    large = demux(media.h264_clip(duration=3.0, gop_s=1.0, size=(640, 360)), "mp4")
    sub_hub = LiveHub("cam1")
    cam = CameraConfig(id="cam1", url="rtsp://127.0.0.1:9/main", sub_url="rtsp://127.0.0.1:9/sub")
    gw = gateway([cam], LiveConfig(), feeds={}, sub_hubs={"cam1": sub_hub})
    stop = threading.Event()

    # main: 1.2 s of 320x180, then the camera comes back at 640x360 (a new StreamInfo)
    def feed_main() -> None:
        feed(gw.hubs["cam1"], small[:30], stop, False)
        feed(gw.hubs["cam1"], large, stop, True)

    main_feed = threading.Thread(target=feed_main, daemon=True)
    sub_feed = threading.Thread(target=feed, args=(sub_hub, small, stop, True), daemon=True)
    main_feed.start()
    sub_feed.start()
    try:
        wait_keyframe(gw.hubs["cam1"])
        wait_keyframe(sub_hub)
        with CentreClient(broker.url) as centre:
            viewer = LiveViewer(centre, GW, "cam1", lease_s=30.0)
            viewer.start()
            epochs: list[bytearray] = []
            for out in viewer.outputs(3.0):
                if out.kind == "init":
                    epochs.append(bytearray())
                epochs[-1] += out.data
            viewer.stop()
            sub = LiveViewer(centre, GW, "cam1", stream="sub", lease_s=30.0)
            reply = sub.start()
            assert reply["stream"] == "sub" and reply["width"] == 320 and "note" not in reply
            sub_bytes = b"".join(o.data for o in sub.outputs(1.0))
            sub.stop()
    finally:
        stop.set()
        main_feed.join(5)
        sub_feed.join(5)
    assert len(epochs) == 2, "the new picture format needs its own init segment"
    first, second = (decode_all(bytes(e)) for e in epochs)
    assert {(f.width, f.height) for f in first} == {(320, 180)}
    assert {(f.width, f.height) for f in second} == {(640, 360)}
    assert first[0].key_frame and second[0].key_frame
    assert {(f.width, f.height) for f in decode_all(sub_bytes)} == {(320, 180)}
