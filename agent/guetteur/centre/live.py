"""``guetteur centre live``: watch a camera live; writes playable fragmented MP4 to a file or stdout.

    guetteur centre live -b mqtt://broker:1883 -g gw1 --camera cam1 -o - | ffplay -

It picks a session id, subscribes to the session topic *first* (so it receives the cached GOP the
gateway sends at once), sends ``live.start``, renews the lease every third of it, and sends
``live.stop`` on Ctrl-C or SIGTERM. The output always starts with the init segment and a fragment
that starts on a keyframe, so it decodes from its first byte; after a lost fragment (QoS 0) it
skips to the next keyframe fragment instead of writing undecodable frames. When the camera
changes format (new init segment), a file output continues in ``NAME.2.mp4``, ``NAME.3.mp4``...
"""

from __future__ import annotations

import argparse
import contextlib
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

import paho.mqtt.client as mqtt

from guetteur.centre.client import (
    CentreClient,
    CentreError,
    add_connection_arguments,
    add_gateway_argument,
    add_signing_arguments,
    client_from_args,
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
        out.append(Output("data", payload, init_id))
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
    add_connection_arguments(parser)
    add_signing_arguments(parser, operator=False)
    add_gateway_argument(parser)
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument(
        "--stream",
        choices=("main", "sub"),
        default="main",
        help="main stream or the camera's sub-stream (default main)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="S",
        help="lease in seconds, renewed every third of it (default 30)",
    )
    parser.add_argument(
        "--operator",
        default=os.environ.get("USER"),
        help="operator name for the audit trail (default $USER)",
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
        return watch(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def watch(args: argparse.Namespace, stop: threading.Event) -> int:
    """The body of ``run``, stoppable by ``stop`` (signals set it)."""
    try:
        client = client_from_args(args)
        client.connect()
    except (CentreError, ValueError) as exc:
        print(f"live: {exc}", file=sys.stderr)
        return 2
    viewer = LiveViewer(client, args.gateway, args.camera, args.stream, args.lease, args.operator)
    files = OutputFiles(args.output)
    code = 0
    try:
        try:
            reply = viewer.start()
        except (LiveError, CentreError) as exc:
            print(f"live: camera {args.camera} on {args.gateway} refused: {exc}", file=sys.stderr)
            return 2
        print(
            f"live: session {reply['session']} on {args.gateway}/{args.camera} "
            f"({reply.get('stream')} {reply.get('codec')} {reply.get('width')}x"
            f"{reply.get('height')}, lease {reply.get('lease_s')} s)"
            + (f"; {reply['note']}" if reply.get("note") else ""),
            file=sys.stderr,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                for out in viewer.outputs(0.2):
                    files.write(out)
            except BrokenPipeError:
                break  # the player went away: stop the session below
            except LiveError as exc:
                print(f"live: session {viewer.session} lost: {exc}", file=sys.stderr)
                code = 1
                break
            if viewer.ended:
                print(f"live: the gateway ended session {viewer.session}: {viewer.ended}",
                      file=sys.stderr)  # fmt: skip
                code = 0 if viewer.ended == "stopped" else 1
                break
    finally:
        viewer.stop()
        files.close()
        client.close()
        if viewer.reply is not None:
            print(f"live: {files.bytes} bytes written, {viewer.assembler.fragments_written} "
                  f"fragments, {viewer.renewals} renewals", file=sys.stderr)  # fmt: skip
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="guetteur centre live", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
