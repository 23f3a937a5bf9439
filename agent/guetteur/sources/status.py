"""Camera status reporting and the sentences a technician reads when a camera misbehaves.

``StatusReporter`` keeps one ``CameraStatus`` per camera, pushes a copy to the sink when something
a person would care about changes (state, error, codec, size, a clearly different frame rate) and
logs state changes once. ``describe_open_error``/``describe_read_error`` turn FFmpeg/OS errors into
sentences: what failed, where, and what to check — never with a password in them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from guetteur.config import redact_url
from guetteur.sources.base import CameraStatus, SourceSink

log = logging.getLogger("guetteur.sources")

# States (CameraStatus.state)
STARTING = "starting"
STREAMING = "streaming"
RECONNECTING = "reconnecting"
STALLED = "stalled"
FAILED = "failed"
STOPPED = "stopped"

# Report a new fps figure only when it moved by this fraction (status messages are retained MQTT
# messages: no need to publish 24.9 then 25.1).
_FPS_CHANGE = 0.2


class StatusReporter:
    """Owns the camera's status; thread-safe (a sub-stream thread reports into it too)."""

    def __init__(self, camera_id: str, sink: SourceSink, secrets: tuple[str, ...] = ()) -> None:
        self.camera_id = camera_id
        self.sink = sink
        # Texts that must never leave the process (the password, raw and URL-quoted).
        self._secrets = tuple(s for s in {*secrets, *(quote(s, safe="") for s in secrets)} if s)
        self._lock = threading.Lock()
        self.status = CameraStatus(camera=camera_id, state=STARTING, since=time.time())

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def update(
        self, state: str | None = None, *, last_error: str | Any | None = ..., **fields: Any
    ) -> None:
        """Change the state and/or fields; pushes to the sink when anything changed. Pass
        ``last_error=None`` to clear the error, omit it to keep it."""
        with self._lock:
            old = self.status
            changes: dict[str, Any] = {}
            if state is not None and state != old.state:
                changes["state"] = state
                changes["since"] = time.time()
                changes["connected"] = state == STREAMING
            if last_error is not ...:
                err = self.scrub(last_error) if isinstance(last_error, str) else None
                if err != old.last_error:
                    changes["last_error"] = err
            for key, value in fields.items():
                if (
                    key == "fps"
                    and value is not None
                    and old.fps is not None
                    and abs(value - old.fps) <= _FPS_CHANGE * old.fps
                ):
                    continue
                if key == "extra":
                    value = {**old.extra, **value}
                if getattr(old, key) != value:
                    changes[key] = value
            if not changes:
                return
            self.status = dataclasses.replace(old, **changes)
            snapshot = dataclasses.replace(self.status, extra=dict(self.status.extra))
        if "state" in changes or "last_error" in changes:
            self._log(snapshot)
        try:
            self.sink.on_status(snapshot)
        except Exception:  # a broken sink must not kill the camera thread
            log.exception("camera %s: status sink failed", self.camera_id)

    def _log(self, status: CameraStatus) -> None:
        if status.state == STREAMING:
            size = f"{status.width}x{status.height}" if status.width else "?"
            log.info("camera %s: streaming %s %s", self.camera_id, status.codec or "?", size)
        elif status.state in (FAILED, STALLED, RECONNECTING):
            log.warning("camera %s: %s: %s", self.camera_id, status.state, status.last_error)
        else:
            log.info("camera %s: %s", self.camera_id, status.state)


def where(url: str) -> str:
    """``host:port`` of a network URL (what the technician checks), or the redacted URL."""
    try:
        parts = urlsplit(url)
        if parts.hostname:
            default = 322 if parts.scheme == "rtsps" else 554
            return f"{parts.hostname}:{parts.port or default}"
    except ValueError:
        pass
    return redact_url(url)


def _strerror(exc: BaseException) -> str:
    """The error text without the file name/URL PyAV and OSError append (it may hold a password)."""
    text = getattr(exc, "strerror", None)
    if isinstance(text, str) and text:
        return text
    return exc.__class__.__name__


def _is(exc: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def describe_open_error(exc: BaseException, url: str, open_timeout_s: float) -> tuple[str, str]:
    """``(state, sentence)`` for a failure to open a network stream. ``failed`` means a person
    must fix something (credentials, path, camera settings); ``reconnecting`` may heal itself."""
    at = where(url)
    code = getattr(exc, "errno", None)
    if _is(exc, "HTTPUnauthorizedError") or _is(exc, "HTTPForbiddenError"):
        what = "401 Unauthorized" if _is(exc, "HTTPUnauthorizedError") else "403 Forbidden"
        return FAILED, f"{at} refused the credentials ({what}): check username/password"
    if _is(exc, "HTTPNotFoundError"):
        path = urlsplit(url).path or "/"
        return FAILED, f"{at} has no stream at {path} (404 Not Found): check the URL path"
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return (
            RECONNECTING,
            f"cannot connect to {at}: connection refused (camera off or wrong port?)",
        )
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return RECONNECTING, f"cannot reach {at}: {_strerror(exc).lower()} (check cable/network)"
    if isinstance(exc, TimeoutError) or _is(exc, "ExitError") or code == errno.ETIMEDOUT:
        return (
            RECONNECTING,
            f"no answer from {at} within {open_timeout_s:g} s (camera hung, overloaded or "
            "filtered by a firewall?)",
        )
    if _is(exc, "InvalidDataError"):
        return FAILED, f"{at} did not answer as an RTSP camera (invalid data): check the URL/port"
    if isinstance(exc, NoVideoStream):
        return FAILED, f"{at}: {exc}"
    if _is(exc, "HTTPClientError") or _is(exc, "HTTPServerError") or _is(exc, "HTTPOtherError"):
        return FAILED, f"{at} answered with an error ({_strerror(exc)}): check the URL"
    return RECONNECTING, f"cannot open stream at {at}: {_strerror(exc)}"


class NoVideoStream(Exception):
    """The input opened but carries no video stream we can use."""


def with_retry(sentence: str, delay_s: float, verb: str = "retrying") -> str:
    """``sentence; retrying in 2.3 s`` — what happens next, for the status and the log."""
    return (
        f"{sentence}; {verb} in {delay_s:.1f} s"
        if delay_s < 10
        else f"{sentence}; {verb} in {delay_s:.0f} s"
    )
