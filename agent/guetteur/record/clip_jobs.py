"""Event clips as jobs that survive a crash and never hold a stop up.

An event pins its range at start (open-ended, so retention keeps it); its end turns into a
``ClipJob`` written to the journal (``record.event_journal``) in the transaction that closes the
event, then pinned to its bounded range and queued here. One worker thread (``event-clip``) cuts
every job that is due (``clip_due``, a pure policy), hands the MP4 to the publisher, unpins, and
only then marks the job done: a crash at any point leaves the job in the journal, and the next
start cuts it again (same clip id: the outbox and the centre de-duplicate).

When the agent stops, the cameras are stopped and the recorder has closed its segments: nothing
more will be recorded, so every job is cut at once with what is there (a missing post-roll is a
gap, said in the log) until the stop's deadline; what is left stays in the journal and is
resumed at the next start. The clipper has its own connection to the segment index so it can cut
after the recorder has closed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from guetteur.config import EventsConfig
from guetteur.record.clips import ClipError, cut_clip
from guetteur.record.event_journal import ClipJob, EventJournal
from guetteur.record.index import SegmentIndex
from guetteur.record.retention import Pin
from guetteur.timeutil import iso_ms
from guetteur.uplink.protocol import valid_id
from guetteur.uplink.publish import ClipFile, Publisher

log = logging.getLogger(__name__)

RETRY_S = 30.0  # a cut that failed for another reason than "nothing recorded" (disk, outbox)


def clip_due(
    job: ClipJob,
    covered_until: float | None,
    now: float,
    *,
    stopping: bool,
    recording_since: float,
    max_wait_s: float,
) -> bool:
    """Whether to cut ``job`` now (pure). Yes when its post-roll is recorded; when the agent is
    stopping (what is recorded is all there will be); when its range ended before this run began
    recording (a job resumed after a restart: the rest was never recorded); or when the camera
    has recorded nothing up to the post-roll ``max_wait_s`` after it (a camera that went quiet).
    """
    if stopping or job.t1 <= recording_since:
        return True
    if covered_until is not None and covered_until >= job.t1:
        return True
    return now >= job.t1 + max_wait_s


class EventClipper:
    """Clips for events: pin, journal, cut when due, publish, unpin, done."""

    def __init__(
        self,
        data_dir: Path,
        journal: EventJournal,
        publisher: Publisher,
        events: EventsConfig,
        segment_s: float,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.25,
    ) -> None:
        self.journal = journal
        self.publisher = publisher
        self.events = events
        self.out_dir = Path(data_dir) / "clips"
        self.index = SegmentIndex.for_data_dir(data_dir)
        self.clock = clock
        self.max_wait_s = segment_s * 2 + 10  # two segments late and more: the camera went quiet
        self.recording_since = clock()
        self._poll_s = poll_s
        self._cv = threading.Condition()
        self._pending: dict[str, ClipJob] = {}
        self._retry_at: dict[str, float] = {}
        self._stopping = False
        self._deadline = float("inf")  # monotonic; set by close
        self._thread = threading.Thread(target=self._run, name="event-clip", daemon=True)
        self._thread.start()

    # -- from the runtime ---------------------------------------------------------------------

    def event_started(self, camera: str, event_id: str, start: float) -> None:
        # Open-ended until the end is known; the legal maximum still bounds it.
        self._pin(Pin(event_id, camera, start - self.events.pre_roll_s, float("inf")))

    def _pin(self, pin: Pin) -> None:
        """Pin, or say why not: a pin that cannot be written (a full disk) must not stop the
        event's message or its clip."""
        try:
            self.index.add_pin(pin, self.clock())
        except sqlite3.Error as exc:
            log.warning(
                "camera %s: video of event %s not pinned (%s); retention may delete it before "
                "its clip is cut",
                pin.camera,
                pin.pin_id,
                exc,
            )

    def event_ended(self, camera: str, event_id: str, start: float, end: float) -> None:
        """Journal the end (the event is no longer open, its clip is owed), then queue the job."""
        if not valid_id(event_id):
            log.error("no clip for event %r of %s: not a valid id", event_id, camera)
            self.journal.ended(event_id, None)
            return
        job = ClipJob(
            event_id,
            camera,
            start,
            end,
            start - self.events.pre_roll_s,
            end + self.events.post_roll_s,
            self.clock(),
        )
        self.journal.ended(event_id, job)
        self._take(job)

    def resume(self) -> int:
        """Queue the jobs a previous run left in the journal and release the pins no job holds
        any more (a crash between a clip's delivery and its unpin, or pins of events that were
        open and are now ended with a bounded job). Call once at start, after the events left
        open have been ended. Returns the number of jobs resumed."""
        jobs = self.journal.jobs()
        for job in jobs:
            self._take(job)
        owed = {job.event_id for job in jobs}
        with self._cv:
            owed |= set(self._pending)
        stale = [pin for pin in self.index.pins() if pin.pin_id not in owed]
        for pin in stale:
            self.index.remove_pin(pin.pin_id)
            log.warning(
                "camera %s: pin %s (%s..%s) held by no clip job any more; released, retention "
                "may delete that video again",
                pin.camera,
                pin.pin_id,
                iso_ms(pin.t0),
                iso_ms(pin.t1) if pin.t1 != float("inf") else "open-ended",
            )
        if jobs:
            log.info("%d event clip(s) owed by the previous run resumed", len(jobs))
        return len(jobs)

    def pending(self) -> int:
        with self._cv:
            return len(self._pending)

    def idle(self) -> bool:
        """No cut running (after ``close``: its connections may be closed)."""
        return not self._thread.is_alive()

    def close(self, deadline: float) -> int:
        """Cut every job now with what is recorded, until ``deadline`` (time.monotonic()); the
        jobs left stay in the journal for the next start. Returns how many are left."""
        with self._cv:
            self._stopping = True
            self._deadline = deadline
            self._cv.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self.pending()
        if left:
            log.warning(
                "stopping: %d event clip(s) not cut in time; they stay owed and are cut at the "
                "next start",
                left,
            )
        if self.idle():  # else a cut still runs past the deadline: it keeps its connection
            self.index.close()
        return left

    # -- the worker ---------------------------------------------------------------------------

    def _take(self, job: ClipJob) -> None:
        self._pin(Pin(job.event_id, job.camera, job.t0, job.t1))
        with self._cv:
            self._pending[job.event_id] = job
            self._cv.notify_all()

    def _due(self) -> list[ClipJob]:
        now = self.clock()
        with self._cv:
            stopping = self._stopping
            jobs = [
                j
                for j in sorted(self._pending.values(), key=lambda j: j.created)
                if stopping or self._retry_at.get(j.event_id, 0.0) <= time.monotonic()
            ]
        covered = {camera: self.index.covered_until(camera) for camera in {j.camera for j in jobs}}
        return [
            j
            for j in jobs
            if clip_due(
                j,
                covered[j.camera],
                now,
                stopping=stopping,
                recording_since=self.recording_since,
                max_wait_s=self.max_wait_s,
            )
        ]

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stopping and (not self._pending or time.monotonic() >= self._deadline):
                    return
            try:
                due = self._due()
            except Exception:
                log.exception("event clips: the segment index cannot be read; retrying")
                with self._cv:
                    if self._stopping:
                        return  # the jobs stay owed: the next start cuts them
                    self._cv.wait(RETRY_S)
                continue
            for job in due:
                with self._cv:
                    if time.monotonic() >= self._deadline:
                        break
                self._cut(job)
            if not due:
                with self._cv:
                    if not self._stopping:
                        self._cv.wait(self._poll_s)

    def _cut(self, job: ClipJob) -> None:
        camera, event_id = job.camera, job.event_id
        try:
            result = cut_clip(
                self.index,
                camera,
                job.start,
                job.end,
                job.start - job.t0,
                job.t1 - job.end,
                self.out_dir / f"{job.clip_id}.mp4",
            )
            if result.gaps:
                log.warning(
                    "camera %s: clip of event %s has %d gap(s) (%s): not recorded",
                    camera,
                    event_id,
                    len(result.gaps),
                    ", ".join(f"{iso_ms(a)}..{iso_ms(b)}" for a, b in result.gaps),
                )
            self.publisher.submit_clip(
                ClipFile(
                    clip_id=job.clip_id,
                    path=str(result.path),
                    camera=camera,
                    event_id=event_id,
                    start=iso_ms(result.start),
                    end=iso_ms(result.end),
                )
            )
        except ClipError as exc:
            log.error("camera %s: no clip for event %s: %s", camera, event_id, exc.message)
        except Exception as exc:
            # Not lost: the job stays in the journal; retried here, or at the next start.
            log.error(
                "camera %s: clip of event %s failed (%s); retried in %.0f s or at the next start",
                camera,
                event_id,
                exc,
                RETRY_S,
            )
            with self._cv:
                self._retry_at[event_id] = time.monotonic() + RETRY_S
                if self._stopping:
                    self._pending.pop(event_id, None)  # the next start retries it
            return
        # The publisher owns the file now (or there is nothing to cut): the video may go.
        self.index.remove_pin(event_id)
        self.journal.done(event_id)
        with self._cv:
            self._pending.pop(event_id, None)
            self._retry_at.pop(event_id, None)
