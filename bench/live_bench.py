#!/usr/bin/env python3
"""Live on demand: request → first decodable frame at the centre, and CPU per live session.

    .venv/bin/python bench/live_bench.py [--requests 20] [--size 1280x720] [--gop 4]
                                         [--sessions 4] [--cpu-seconds 10] [--json]

Real parts on loopback, started here: Mosquitto, the GStreamer RTSP test server serving an
ffmpeg-made H.264 clip (25 fps, keyframe every ``--gop`` s, no B-frames, like a camera), the real
RTSP source feeding a LiveHub, the real Link + CommandDispatcher + LiveService, and the real
CentreClient / LiveViewer.

1. Time to first frame: ``--requests`` sessions started at random moments of the GOP. Each time
   is from just before the live.start request to the moment PyAV decodes a first picture from
   what the viewer received (the viewer's output, from its first byte). Printed beside the
   limits measured in the same run: the MQTT command round trip (live.renew, same path, no
   media) plus the decode of one keyframe, and what waiting for the camera's next keyframe would
   cost without the GOP cache (measured per request from the hub's GOP age).
2. CPU per session: gateway process CPU with ``--sessions`` live sessions (``LiveViewer``s in a
   subprocess, output discarded, as the centre's relay consumes them) minus the same process
   without sessions, per session, as % of one core; and against decoding the same stream (what any
   re-encoding would cost at least), measured in the same run. Also bytes published per camera
   byte the sessions carried (init segments and the per-frame moof overhead).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import av

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.broker import MosquittoBroker  # noqa: E402
from tests.fixtures.media import MediaFactory  # noqa: E402
from tests.fixtures.rtsp import RtspTestServer  # noqa: E402

from guetteur.centre.client import CentreClient  # noqa: E402
from guetteur.centre.tools.live import LiveViewer  # noqa: E402
from guetteur.config import CameraConfig, LiveConfig, MqttConfig  # noqa: E402
from guetteur.live.hub import LiveHub  # noqa: E402
from guetteur.live.service import LiveService  # noqa: E402
from guetteur.media.types import AnalyticFrame, EncodedPacket  # noqa: E402
from guetteur.sources import CameraStatus, open_source  # noqa: E402
from guetteur.uplink.audit import AuditTrail  # noqa: E402
from guetteur.uplink.commands import CommandDispatcher  # noqa: E402
from guetteur.uplink.link import Link  # noqa: E402
from guetteur.uplink.publish import ClipFile, OutboundItem  # noqa: E402

# the viewers' process: N LiveViewers of one camera on one broker connection, until terminated
VIEWERS = """
import sys, threading
from guetteur.centre.client import CentreClient
from guetteur.centre.tools.live import LiveViewer
url, gw, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = CentreClient(url).connect()
def watch():
    viewer = LiveViewer(client, gw, "cam1", lease_s=30.0, operator="bench")
    viewer.start()
    while True:
        for _ in viewer.outputs(0.2):
            pass
threads = [threading.Thread(target=watch, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
threading.Event().wait()
"""
GW = "gw1"


class Keep:
    def __init__(self) -> None:
        self.items: list[OutboundItem] = []

    def submit(self, item: OutboundItem) -> None:
        self.items.append(item)

    def submit_clip(self, clip: ClipFile) -> None:
        pass


class HubSink:
    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub
        self.bytes = 0

    def on_packet(self, packet: EncodedPacket) -> None:
        self.bytes += len(packet.data)
        self.hub.on_packet(packet)

    def on_frame(self, frame: AnalyticFrame) -> None:
        pass

    def on_status(self, status: CameraStatus) -> None:
        pass


def first_picture(data: bytes) -> bool:
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            for _frame in c.decode(video=0):
                return True
    except av.FFmpegError:
        return False
    return False


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def keyframe_decode_s(clip: Path) -> float:
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        packet = next(p for p in c.demux(stream) if p.is_keyframe)
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(stream.codec_context.name, "r"))
        ctx.extradata = stream.codec_context.extradata
        ctx.thread_count = 1
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            ctx.decode(packet)
            ctx.decode(None)
            best = min(best, time.perf_counter() - t)
            ctx = cast(av.VideoCodecContext, av.CodecContext.create(stream.codec_context.name, "r"))
            ctx.extradata = stream.codec_context.extradata
            ctx.thread_count = 1
        return best


def decode_cpu_per_s(clip: Path) -> float:
    """CPU seconds to decode one second of the stream (one thread)."""
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        t = time.process_time()
        frames = sum(1 for _ in c.decode(stream))
        cpu = time.process_time() - t
    return cpu / (frames / 25.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--gop", type=float, default=4.0)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--cpu-seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="live-bench-"))
    clip = MediaFactory(work).h264_clip(
        duration=20.0, fps=25.0, gop_s=args.gop, size=(width, height)
    )
    broker = MosquittoBroker(work)
    broker.start()
    rtsp = RtspTestServer(clip, work)
    rtsp.start()
    results: dict[str, Any] = {"size": args.size, "gop_s": args.gop}
    stop = threading.Event()
    link: Link | None = None
    service: LiveService | None = None
    try:
        keep = Keep()
        audit = AuditTrail(keep, GW)
        dispatcher = CommandDispatcher(audit, rate_per_s=100, burst=200)
        link = Link(MqttConfig(url=broker.url), GW, dispatcher)
        hub = LiveHub("cam1")
        cam = CameraConfig(id="cam1", url=rtsp.url)
        service = LiveService(LiveConfig(max_sessions_per_camera=8, max_sessions=8), [cam], link,
                              audit, {"cam1": hub})  # fmt: skip
        service.register(dispatcher)
        service.start()
        link.start()
        if not link.wait_subscribed(5):
            raise SystemExit("gateway link did not connect")
        sink = HubSink(hub)
        threading.Thread(target=open_source(cam).run, args=(sink, stop), daemon=True).start()
        deadline = time.monotonic() + 20
        while not hub.state().has_keyframe and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)

        # -- 1. request → first decodable frame ------------------------------------------------
        firsts: list[float] = []
        waits: list[float] = []
        rtts: list[float] = []
        rng = random.Random(7)
        with CentreClient(broker.url) as centre:
            for _ in range(20):  # the command path alone: a renew of no session, one reply
                t = time.monotonic()
                centre.request(GW, "live.renew", {"session": "none"})
                rtts.append(time.monotonic() - t)
            for _ in range(args.requests):
                time.sleep(rng.uniform(0.2, args.gop / 2))
                state = hub.state()
                # without the cache, the viewer would wait for the next keyframe
                waits.append(max(0.0, args.gop - state.gop_s - 0.04))
                viewer = LiveViewer(centre, GW, "cam1", lease_s=30.0, operator="bench")
                t0 = time.monotonic()
                viewer.start()
                got = bytearray()
                done = None
                while done is None and time.monotonic() - t0 < 10:
                    for out in viewer.outputs(0.05):
                        got += out.data
                        if out.kind == "data" and first_picture(bytes(got)):
                            done = time.monotonic() - t0
                            break
                if done is None:
                    raise SystemExit("no decodable frame within 10 s")
                firsts.append(done)
                viewer.stop()
        kf = keyframe_decode_s(clip)
        results["first_frame_s"] = {
            "median": statistics.median(firsts),
            "p95": pct(firsts, 0.95),
            "max": max(firsts),
            "n": len(firsts),
        }
        results["limit_s"] = {"command_rtt_median": statistics.median(rtts), "keyframe_decode": kf}
        results["without_cache_wait_s"] = {
            "median": statistics.median(waits),
            "p95": pct(waits, 0.95),
        }

        # -- 2. CPU per session ------------------------------------------------------------------
        def process_cpu() -> float:
            t = os.times()
            return t.user + t.system

        c0, w0 = process_cpu(), time.monotonic()
        time.sleep(args.cpu_seconds)
        base = (process_cpu() - c0) / (time.monotonic() - w0)
        # viewers as the centre's relay runs them (LiveViewers on one broker connection, output
        # discarded), in a process of their own: what is measured is the gateway's side
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'agent'}:{REPO}")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", VIEWERS, broker.url, GW, str(args.sessions)],
                stderr=subprocess.DEVNULL,
                env=env,
            )
        ]
        deadline = time.monotonic() + 10
        while len(service.sessions()) < args.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        c0, w0 = process_cpu(), time.monotonic()
        time.sleep(args.cpu_seconds)
        loaded = (process_cpu() - c0) / (time.monotonic() - w0)
        # fragments only (init segments are a one-off): the per-frame container overhead
        sent = sum(s.stats.bytes - s.stats.init_bytes for s in service.sessions())
        camera = sum(s.stats.packet_bytes for s in service.sessions())
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        per_session = max(0.0, loaded - base) / args.sessions
        decode = decode_cpu_per_s(clip)
        results["cpu"] = {
            "gateway_idle_core": base,
            "gateway_with_sessions_core": loaded,
            "sessions": args.sessions,
            "per_session_core": per_session,
            "decode_core": decode,
            "per_session_vs_decode": per_session / decode if decode else None,
        }
        results["bytes_per_camera_byte"] = sent / camera if camera else None
    finally:
        stop.set()
        if service is not None:
            service.close()
        if link is not None:
            link.stop()
        rtsp.stop()
        broker.stop()

    ff, lim = results["first_frame_s"], results["limit_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    cpu = results["cpu"]
    limit_s = lim["command_rtt_median"] + lim["keyframe_decode"]
    print(f"live bench: RTSP H.264 {args.size} 25 fps, GOP {args.gop:g} s, loopback")
    print(
        f"request -> first decodable frame over {ff['n']} requests: median "
        f"{ff['median'] * 1000:.0f} ms, p95 {ff['p95'] * 1000:.0f} ms, max {ff['max'] * 1000:.0f} ms"
        f" (goal p95 <= 1000 ms: {'met' if ff['p95'] <= 1.0 else 'NOT met'})"
    )
    print(
        f"  limit in this run: command round trip {lim['command_rtt_median'] * 1000:.1f} ms + "
        f"keyframe decode {lim['keyframe_decode'] * 1000:.1f} ms = {limit_s * 1000:.1f} ms; "
        f"median / limit = {ff['median'] / limit_s:.1f}x"
    )
    w = results["without_cache_wait_s"]
    print(
        f"  without the GOP cache: wait for the next keyframe median {w['median'] * 1000:.0f} ms,"
        f" p95 {w['p95'] * 1000:.0f} ms (before any transfer)"
    )
    print(
        f"CPU per live session: {cpu['per_session_core'] * 100:.2f} % of a core "
        f"(gateway {cpu['gateway_idle_core'] * 100:.1f} % idle -> "
        f"{cpu['gateway_with_sessions_core'] * 100:.1f} % with {cpu['sessions']} sessions); "
        f"decoding the same stream costs {cpu['decode_core'] * 100:.1f} % of a core: "
        f"session / decode = {cpu['per_session_vs_decode']:.3f}"
    )
    print(f"bytes published per camera byte: {results['bytes_per_camera_byte']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
