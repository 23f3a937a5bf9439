"""kill -9 during events, on a real agent process, a real broker and the centre's receiver:
events in progress used to never get an ``end`` at the centre, clips of events that had already
ended were lost (4–7 per kill), and their pins stayed for 30 days. Now the next start ends what
was open (``reason: "restart"``), cuts every clip still owed and releases the pins."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import pytest

from guetteur.centre.receiver.mqtt import Receiver
from tests.faults.field_agent import (
    FieldAgent,
    receiver_clips,
    receiver_events,
    receiver_rows,
    write_config,
)
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.waiting import wait_for

KILLS = 2


def unfinished(db: Path) -> tuple[set[str], set[str]]:
    """At the centre: (events started but not ended, events ended but without their clip)."""
    events = receiver_events(db)
    clips = receiver_clips(db)
    return (
        {e for e, kinds in events.items() if "end" not in kinds},
        {e for e, kinds in events.items() if "end" in kinds and not clips.get(e)},
    )


def new_unfinished(db: Path, seen: set[str]) -> bool:
    opened, owed = unfinished(db)
    return bool(opened - seen and owed - seen)


@pytest.mark.slow
def test_kill_9_during_events_loses_no_end_and_no_clip(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "gateway"
    # a post-roll of 6 s: at any moment some clip waits for it (owed, not yet cut)
    config = write_config(tmp_path / "guetteur.yaml", broker.url, data, cameras=2, post_roll_s=6)
    receiver = Receiver(broker.url, tmp_path / "centre", client_id="centre-crash")
    receiver.start()
    db = tmp_path / "centre" / "receiver.db"
    agent = FieldAgent(config, data, tmp_path / "agent.log")
    was_open: set[str] = set()
    was_owed: set[str] = set()
    try:
        for _ in range(KILLS):
            agent.start()
            # kill while the centre has an event without its end and an ended event without
            # its clip (what the old agent lost)
            wait_for(
                partial(new_unfinished, db, was_open | was_owed),
                60,
                "a new open event and a new ended event still owed its clip, at the centre",
            )
            agent.kill()
            time.sleep(0.5)  # what the broker had in flight reaches the receiver
            opened, owed = unfinished(db)
            was_open |= opened
            was_owed |= owed
        agent.start()

        def settled() -> bool:
            events = receiver_events(db)
            clips = receiver_clips(db)
            return all("end" in events.get(e, {}) for e in was_open) and all(
                clips.get(e) for e in was_open | was_owed
            )

        try:
            wait_for(settled, 90, "an end for every event left open and every owed clip")
        except AssertionError:
            opened, owed = unfinished(db)
            raise AssertionError(
                f"still open: {opened & was_open}, still owed: {owed & (was_open | was_owed)}; "
                f"agent's journal {agent.journal()}\n{agent.output()}"
            ) from None
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    finally:
        if agent.alive():
            agent.kill()
        receiver.stop()

    events = receiver_events(db)
    for event_id in was_open:
        assert events[event_id]["end"] == 1
        (message,) = receiver_rows(
            db, "SELECT message FROM events WHERE event_id = ? AND type = 'end'", event_id
        )
        end = json.loads(message[0])
        assert end["reason"] == "restart", end
        assert end["end"] >= end["start"]
    clips = receiver_clips(db)
    assert all(clips[e] == 1 for e in was_open | was_owed)
    # every event the centre heard of before the last stop has one end, and no message twice
    for event_id, kinds in events.items():
        assert kinds.get("start") == 1 and kinds.get("end", 0) <= 1, (event_id, kinds)
    # no pin left behind but those of clips still owed after the last (clean) stop
    _, owed = agent.journal()
    assert set(agent.pins()) <= owed, agent.pins()
