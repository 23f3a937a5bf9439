"""``DetectorWorker``: the detector runs beside ingest in its own thread and never blocks the
analysis. When it falls behind, frames are skipped and counted, never queued without bound.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from guetteur.analytics.detection.regions import Detection
from guetteur.analytics.detection.runtime import Detector
from guetteur.media.types import AnalyticFrame, Box

log = logging.getLogger(__name__)

DetectionCallback = Callable[[AnalyticFrame, list[Detection]], None]


@dataclass
class _CameraQueue:
    pending: deque[tuple[AnalyticFrame, list[Box] | None, DetectionCallback]]
    submitted: int = 0
    analysed: int = 0
    skipped: int = 0
    errors: int = 0
    last_error: str | None = None


class DetectorWorker:
    """Runs the detector in its own thread so ingest, recording and motion never wait for it.

    Each camera has its own short queue (``max_queue`` frames). ``submit`` never blocks: when a
    camera's queue is full its oldest frame is dropped and counted in ``skipped(camera)`` — the
    freshest frames are the ones worth analysing. Cameras are served in turn, so one busy camera
    cannot starve the others. Callbacks run on the worker thread."""

    def __init__(self, detector: Detector, max_queue: int = 2) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.detector = detector
        self.max_queue = max_queue
        self._cameras: dict[str, _CameraQueue] = {}
        self._order: deque[str] = deque()  # round-robin order of cameras with pending frames
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
                self._thread.start()

    def submit(
        self,
        camera: str,
        frame: AnalyticFrame,
        motion_boxes: Sequence[Box] | None,
        callback: DetectionCallback,
    ) -> bool:
        """Queue a frame for detection around ``motion_boxes``; returns at once. False when an
        older frame of this camera had to be dropped to make room (counted as skipped)."""
        self.start()
        boxes = list(motion_boxes) if motion_boxes is not None else None
        with self._cond:
            q = self._cameras.get(camera)
            if q is None:
                q = self._cameras[camera] = _CameraQueue(deque())
            q.submitted += 1
            accepted_without_drop = True
            if len(q.pending) >= self.max_queue:
                q.pending.popleft()
                q.skipped += 1
                accepted_without_drop = False
            q.pending.append((frame, boxes, callback))
            if camera not in self._order:
                self._order.append(camera)
            self._cond.notify()
        return accepted_without_drop

    def skipped(self, camera: str) -> int:
        with self._cond:
            q = self._cameras.get(camera)
            return q.skipped if q else 0

    def stats(self, camera: str) -> dict[str, Any]:
        """Counters for the camera status: submitted, analysed, skipped, errors, last_error."""
        with self._cond:
            q = self._cameras.get(camera)
            if q is None:
                return {
                    "submitted": 0,
                    "analysed": 0,
                    "skipped": 0,
                    "errors": 0,
                    "last_error": None,
                }
            return {
                "submitted": q.submitted,
                "analysed": q.analysed,
                "skipped": q.skipped,
                "errors": q.errors,
                "last_error": q.last_error,
            }

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame has been analysed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._order and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the frame being analysed; frames still queued are dropped (not counted)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None

    def _next(self) -> tuple[str, AnalyticFrame, list[Box] | None, DetectionCallback] | None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()  # wakes idle() waiters
            self._cond.wait_for(lambda: self._stopping or bool(self._order))
            if self._stopping:
                return None
            camera = self._order.popleft()
            q = self._cameras[camera]
            frame, boxes, callback = q.pending.popleft()
            if q.pending:
                self._order.append(camera)
            self._busy = True
            return camera, frame, boxes, callback

    def _run(self) -> None:
        while (job := self._next()) is not None:
            camera, frame, boxes, callback = job
            try:
                detections = self.detector.detect(frame.colour(), boxes)
            except Exception as exc:
                with self._cond:
                    q = self._cameras[camera]
                    q.errors += 1
                    first_error = q.last_error is None
                    q.last_error = f"{type(exc).__name__}: {exc}"
                if first_error:
                    log.exception("camera %s: object detection failed; frame skipped", camera)
                continue
            with self._cond:
                self._cameras[camera].analysed += 1
            try:
                callback(frame, detections)
            except Exception:
                log.exception("camera %s: detection callback failed", camera)
        with self._cond:
            self._busy = False
            self._cond.notify_all()
