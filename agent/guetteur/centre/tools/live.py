"""Live video at the centre: ordering fMP4 fragments into a decodable stream, and watching.

``guetteur centre live``: watch a camera through the centre server (which signs the gateway's
live session for the logged-in operator and registers the view); writes playable fragmented MP4
to a file or stdout::

    guetteur centre live -s http://csu:8080 -u op1 -g gw1 --camera cam1 -o - | ffplay -

The server relays the gateway's fragments over a WebSocket (``centre.relay``); this tool renews
the view's lease every third of it and stops the view on Ctrl-C or SIGTERM. The output starts
with the init segment and a fragment that starts on a keyframe, so it decodes from its first
byte. When the camera changes format (new init segment), a file output continues in
``NAME.2.mp4``, ``NAME.3.mp4``...

``StreamAssembler`` (pure) puts live messages in writing order; the server's relay uses it.
``LiveViewer`` watches over a ``CentreClient`` on the broker directly: for the gateway's own
tests and benches, which play the centre's part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import aiohttp
import paho.mqtt.client as mqtt

from guetteur.centre.client import CentreClient, CentreError
from guetteur.centre.tools.apiclient import (
    ApiFailure,
    add_gateway_argument,
    add_server_arguments,
    connect,
)
from guetteur.errors import GuetteurError
from guetteur.uplink.mqttutil import user_properties
from guetteur.uplink.protocol import Topics

log = logging.getLogger(__name__)


class LiveError(GuetteurError):
    """The gateway refused or ended the session; ``code`` is its machine-readable code."""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# ----------------------------------------------------------------------------------------------
# Ordering of received messages into a decodable byte stream (pure)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    kind: str  # "init" (start of a stream epoch: a new file) or "data"
    data: bytes
    init_id: str
    key: bool = field(default=False, compare=False)  # a fragment starting on a keyframe


@dataclass
class StreamAssembler:
    """Turns live messages, in arrival order, into output that decodes from its first byte."""

    max_waiting: int = 64
    current_init: str | None = None
    ended: str | None = None  # reason, once the gateway said the session ended
    _inits: dict[str, bytes] = field(default_factory=dict)
    _waiting: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    _last_seq: int | None = None
    _need_key: bool = True
    fragments_written: int = 0
    fragments_skipped: int = 0

    def handle(self, props: dict[str, str], payload: bytes) -> list[Output]:
        kind = props.get("kind")
        if kind == "end":
            self.ended = props.get("reason", "ended")
            return []
        if kind == "init":
            init_id = props.get("init", "")
            if payload:
                self._inits[init_id] = payload
            waiting, self._waiting = self._waiting, []
            out: list[Output] = []
            for p, data in waiting:
                out += self.handle(p, data)
            return out
        if kind != "fragment":
            return []
        init_id = props.get("init", "")
        if init_id not in self._inits:
            # a fragment can overtake its init segment (QoS 0 vs QoS 1): keep it a moment
            if len(self._waiting) < self.max_waiting:
                self._waiting.append((props, payload))
            else:
                self.fragments_skipped += 1
            return []
        try:
            seq = int(props.get("seq", "0"))
        except ValueError:
            seq = 0
        key = props.get("key") == "1"
        out = []
        if self._last_seq is not None and seq <= self._last_seq:
            return []  # duplicate or late
        if self._last_seq is not None and seq != self._last_seq + 1:
            self._need_key = True  # a fragment was lost: its successors lack references
        self._last_seq = seq
        if init_id != self.current_init:
            if not key:
                self.fragments_skipped += 1
                return []
            self.current_init = init_id
            out.append(Output("init", self._inits[init_id], init_id))
            self._need_key = False
        if self._need_key and not key:
            self.fragments_skipped += 1
            return out
        self._need_key = False
        out.append(Output("data", payload, init_id, key))
        self.fragments_written += 1
        return out


# ----------------------------------------------------------------------------------------------
# One viewing session over a CentreClient
# ----------------------------------------------------------------------------------------------


class LiveViewer:
    """Start, renew and stop one live session; ``outputs()`` yields what to write."""

    def __init__(
        self,
        client: CentreClient,
        gateway: str,
        camera: str,
        stream: str = "main",
        lease_s: float = 30.0,
        operator: str | None = None,
        session: str | None = None,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.client = client
        self.gateway = gateway
        self.camera = camera
        self.stream = stream
        self.lease_s = lease_s
        self.operator = operator
        self.session = session or uuid.uuid4().hex[:16]
        self.topic = Topics(client.root, gateway).live(camera, self.session)
        self.request_timeout_s = request_timeout_s
        self.assembler = StreamAssembler()
        self.reply: dict[str, Any] | None = None
        self.started_mono: float | None = None
        self.first_output_mono: float | None = None
        self.first_message_mono: float | None = None
        self.reply_mono: float | None = None
        self.renewals = 0
        self._queue: queue.Queue[tuple[dict[str, str], bytes, float]] = queue.Queue()
        self._next_renew = 0.0
        self._stopped = False

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:  # network thread
        now = time.monotonic()
        if self.first_message_mono is None:
            self.first_message_mono = now
        self._queue.put((user_properties(msg), bytes(msg.payload), now))

    def start(self) -> dict[str, Any]:
        """Subscribe, then ask the gateway; raises LiveError on a refusal."""
        self.client.subscribe(self.topic, self._on_message, qos=1)
        body: dict[str, Any] = {
            "camera": self.camera,
            "stream": self.stream,
            "lease_s": self.lease_s,
            "session": self.session,
        }
        if self.operator:
            body["operator"] = self.operator
        self.started_mono = time.monotonic()
        reply = self.client.request(self.gateway, "live.start", body, self.request_timeout_s)
        if not reply.get("ok"):
            self.client.unsubscribe(self.topic)
            err = reply.get("error") or {}
            raise LiveError(str(err.get("code", "error")), str(err.get("message", reply)))
        self.reply = reply
        self.reply_mono = time.monotonic()
        self.lease_s = float(reply.get("lease_s", self.lease_s))
        self._next_renew = time.monotonic() + self.lease_s / 3
        return reply

    def outputs(self, timeout: float) -> Iterator[Output]:
        """What arrived within ``timeout`` seconds, in writing order; renews when due."""
        deadline = time.monotonic() + timeout
        while True:
            self._renew_if_due()
            left = deadline - time.monotonic()
            try:
                props, payload, _arrived = self._queue.get(timeout=max(0.0, min(left, 0.2)))
            except queue.Empty:
                if time.monotonic() >= deadline or self.assembler.ended:
                    return
                continue
            for out in self.assembler.handle(props, payload):
                if self.first_output_mono is None and out.kind == "data":
                    self.first_output_mono = time.monotonic()
                yield out
            if self.assembler.ended or time.monotonic() >= deadline:
                return

    @property
    def ended(self) -> str | None:
        return self.assembler.ended

    def _renew_if_due(self) -> None:
        if self._stopped or self.reply is None or time.monotonic() < self._next_renew:
            return
        try:
            reply = self.client.request(
                self.gateway, "live.renew", {"session": self.session}, self.request_timeout_s
            )
        except CentreError as exc:
            # try again soon: a third of the lease leaves two more chances
            log.warning("live: renewal of session %s got no answer (%s); retrying", self.session,
                        exc)  # fmt: skip
            self._next_renew = time.monotonic() + min(2.0, self.lease_s / 6)
            return
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise LiveError(str(err.get("code", "error")), str(err.get("message", reply)))
        self.renewals += 1
        self._next_renew = time.monotonic() + self.lease_s / 3

    def stop(self) -> dict[str, Any] | None:
        """Send live.stop (once); returns the gateway's reply, None if it did not answer."""
        if self._stopped or self.reply is None:
            return None
        self._stopped = True
        with contextlib.suppress(Exception):
            self.client.unsubscribe(self.topic)
        if self.assembler.ended:
            return None
        try:
            return self.client.request(
                self.gateway, "live.stop", {"session": self.session}, self.request_timeout_s
            )
        except CentreError as exc:
            log.warning("live: stop of session %s got no answer: %s", self.session, exc)
            return None


# ----------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------


class OutputFiles:
    """Writes to stdout or to a file; a new stream epoch goes to NAME.2.mp4, NAME.3.mp4..."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.epochs = 0
        self.bytes = 0
        self._file: BinaryIO | None = None
        self.paths: list[str] = []

    def write(self, out: Output) -> None:
        if out.kind == "init":
            self.epochs += 1
            if self.target == "-":
                if self.epochs > 1:
                    log.warning("live: the camera changed format; the player may need a restart")
                self._file = sys.stdout.buffer
            else:
                if self._file is not None:
                    self._file.close()
                path = Path(self.target)
                if self.epochs > 1:
                    path = path.with_name(f"{path.stem}.{self.epochs}{path.suffix}")
                    log.warning("live: the camera changed format; continuing in %s", path)
                self._file = open(path, "wb")  # noqa: SIM115 - closed on rotation or close()
                self.paths.append(str(path))
        if self._file is None:
            return
        self._file.write(out.data)
        self._file.flush()
        self.bytes += len(out.data)

    def close(self) -> None:
        if self._file is sys.stdout.buffer:
            try:
                self._file.flush()
            except BrokenPipeError:
                # the player is gone: keep Python's exit flush from raising again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        elif self._file is not None:
            self._file.close()
        self._file = None


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    add_gateway_argument(parser)
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument(
        "--stream",
        choices=("main", "sub"),
        default="main",
        help="main stream or the camera's sub-stream (default main)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE|-",
        help="where to write the fMP4 (default -: stdout, e.g. | ffplay -)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C or SIGTERM)",
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        return asyncio.run(watch(args, stop))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kind(data: bytes) -> str:
    """An init segment starts with an ``ftyp`` box; fragments with ``styp``/``moof``."""
    return "init" if data[4:8] == b"ftyp" else "data"


async def watch(args: argparse.Namespace, stop: threading.Event) -> int:
    """The body of ``run``: a live view through the centre server, stoppable by ``stop``."""
    try:
        client = await connect(args)
    except ApiFailure as exc:
        print(f"live: {exc}", file=sys.stderr)
        return 2
    files = OutputFiles(args.output)
    code, fragments, renewals = 0, 0, 0
    async with client:
        try:
            view = await client.request(
                "POST",
                "/api/live",
                {
                    "gateway": args.gateway,
                    "camera": args.camera,
                    "stream": args.stream,
                },
            )
        except ApiFailure as exc:
            print(f"live: camera {args.camera} on {args.gateway} refused: {exc}", file=sys.stderr)
            return 2
        sid, lease = str(view["session"]), float(view["lease_s"])
        print(
            f"live: session {sid} on {args.gateway}/{args.camera} ({view.get('stream')} "
            f"{view.get('codec')} {view.get('width')}x{view.get('height')}, lease {lease:g} s)",
            file=sys.stderr,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        next_renew = time.monotonic() + lease / 3
        try:
            async with client.websocket(f"/api/live/{sid}/ws") as ws:
                while not stop.is_set():
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    if now >= next_renew:
                        await client.request("POST", f"/api/live/{sid}/renew")
                        renewals += 1
                        next_renew = now + lease / 3
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        data = bytes(msg.data)
                        kind = _kind(data)
                        fragments += kind == "data"
                        files.write(Output(kind, data, str(files.epochs + (kind == "init"))))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        info = json.loads(msg.data)
                        if info.get("type") == "end":
                            reason = info.get("reason")
                            print(f"live: session {sid} ended: {reason}", file=sys.stderr)
                            code = 0 if reason == "stopped" else 1
                            break
                    else:  # closed or error
                        print(f"live: session {sid} lost ({msg.type.name})", file=sys.stderr)
                        code = 1
                        break
        except BrokenPipeError:
            pass  # the player went away: stop the session below
        except ApiFailure as exc:
            print(f"live: session {sid} lost: {exc}", file=sys.stderr)
            code = 1
        finally:
            files.close()
            with contextlib.suppress(ApiFailure):
                await client.request("DELETE", f"/api/live/{sid}")
    print(f"live: {files.bytes} bytes written, {fragments} fragments, {renewals} renewals",
          file=sys.stderr)  # fmt: skip
    return code
