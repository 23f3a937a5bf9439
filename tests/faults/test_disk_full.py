"""A full data partition never wedges the gateway (issue 12), on a real 64 MiB ext4 filesystem.

The partition is a loop-mounted image (we are root in CI); ``-m 0`` gives root no reserved
blocks, as the agent's own user has none. What used to happen on it: event messages dropped
(``database or disk is full``), acknowledgements failing, a traceback at start-up in
``reconcile → clear_writing``, recording stopped for good.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from guetteur.centre.receiver.mqtt import Receiver
from guetteur.config import RecordingConfig
from guetteur.record import reserve
from guetteur.record.index import SegmentIndex
from guetteur.record.writer import Recorder
from guetteur.uplink.outbox.store import OutboxStore
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.disk import MIB, fill, small_partition
from tests.fixtures.waiting import wait_for
from tests.outbox_agent import event_item
from tests.recording_agent import Clip, feed, load_clip, make_h264
from tests.test_durability import count_events, read_db, start_agent

__all__ = ["small_partition"]  # the fixture, used by name


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    media = tmp_path_factory.mktemp("diskmedia") / "cam.mp4"
    return load_clip(make_h264(media, seconds=10, gop_s=1.0, bitrate="2M"))


def test_events_are_queued_and_acked_on_a_full_disk(small_partition: Path) -> None:
    assert reserve.ensure(small_partition, 4 * MIB, keep_free=0)
    store = OutboxStore(small_partition / "outbox", max_bytes=1 << 30)
    try:
        ballast = fill(small_partition)
        assert shutil.disk_usage(small_partition).free < 64 * 1024
        items = [event_item("gw1", "cam1", n) for n in range(300)]
        for item in items:
            assert store.enqueue(item)  # before the reserve: database or disk is full
        assert not reserve.reserve_path(small_partition).exists()  # released for them
        assert store.remove_acked([i.item_id for i in items[:150]]) == 150
        assert store.backlog().by_kind == {"event": 150}
        ballast.unlink()
    finally:
        store.close()


def test_recorder_starts_on_a_full_disk_and_resumes(clip: Clip, small_partition: Path) -> None:
    config = RecordingConfig(segment_s=2, max_percent=None, max_bytes=1 << 30, min_free_bytes=0)
    wall0 = time.time() - 600
    rec = Recorder(config, small_partition)
    packets = list(feed(clip, "cam1", wall0, loops=2))
    for pkt in packets[: len(packets) // 2]:
        rec.on_packet(pkt)
    assert rec.flush()
    rec.close()
    # A crash left a segment being written; then the partition filled up while the agent was down.
    index = SegmentIndex.for_data_dir(small_partition)
    newest = index.all_segments()[-1]
    torn = index.path_of(newest).with_name("20200101T000000.000Z.ts")
    shutil.copy(index.path_of(newest), torn)
    index.mark_writing(torn.relative_to(index.root).as_posix(), "cam1", newest.start + 0.5)
    index.close()
    ballast = fill(small_partition)
    rec = Recorder(config, small_partition)  # before: traceback in reconcile -> clear_writing
    try:
        assert rec.index.writing() == {}
        for pkt in packets[len(packets) // 2 :]:
            rec.on_packet(pkt)
        assert rec.flush()
        time.sleep(0.5)
        status = rec.status()
        covered = rec.index.covered_until("cam1")
        assert covered is not None and covered > packets[-1].wallclock - 5, status
        ballast.unlink()
    finally:
        rec.close()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["limits_larger_than_disk", "fills_while_link_down"])
def test_full_disk_every_event_once_and_the_newest_video(
    scenario: str, broker: MosquittoBroker, small_partition: Path, tmp_path: Path
) -> None:
    """A real agent records (retention limits larger than the disk, 8x real time: ~2 MB/s) and
    queues events on a 64 MiB partition. ``limits_larger_than_disk``: before, the disk filled in
    35 s and recording and events stopped. ``fills_while_link_down``: the broker goes away, the
    partition fills to the last byte (and stays so), the broker comes back. Either way every event
    reaches the receiver exactly once and the newest video is still recorded."""
    media = make_h264(tmp_path / "cam.mp4", seconds=10, gop_s=1.0, bitrate="2M")
    out, log, total = tmp_path / "centre", tmp_path / "generated.log", 600
    receiver = Receiver(broker.url, out, client_id="centre-rx-disk")
    receiver.start()
    assert receiver.wait_connected(10)
    opts = dict(events=total, rate=20, cameras=2, clip_every=0, retry=1.5, record=media)
    pace = 8 if scenario == "limits_larger_than_disk" else 4
    agent = start_agent(broker.url, small_partition, log, record_pace=pace, **opts)
    try:
        wait_for(lambda: count_events(out) >= 40, 30, "the first events at the receiver")
        wait_for(reserve.reserve_path(small_partition).exists, 30, "the reserve file")
        if scenario == "fills_while_link_down":
            time.sleep(6)  # a ring of some 20 MB to turn over in what the ballast leaves
            broker.kill()  # the link goes down...
            fill(small_partition)  # ...and the partition fills up meanwhile, for good
            assert shutil.disk_usage(small_partition).free < 64 * 1024
            time.sleep(6)
            broker.start()
        wait_for(
            lambda: sum(1 for x in log.read_text().splitlines() if x.startswith("E ")) >= total,
            total / 20 + 40,
            "the agent to generate every event",
        )
        expected = {x.split()[1] for x in log.read_text().splitlines() if x.startswith("E ")}
        wait_for(lambda: count_events(out) >= len(expected), 60, "every event at the receiver")
        the_end = time.time()
        time.sleep(1.0)
    finally:
        agent.kill()
        stdout, stderr = agent.communicate(timeout=10)
        print(stdout[-3000:], stderr[-5000:])  # what the agent said, shown when this fails
        receiver.stop()
    stored = [str(r[0]) for r in read_db(out, "SELECT item_id FROM events")]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) == expected, "events lost"
    assert "not stored" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    states = [json.loads(x) for x in stdout.splitlines() if x.startswith('{"recording"')]
    if scenario == "fills_while_link_down":  # said, with the reason
        assert any(s["recording"] == "degraded" for s in states), (states, stderr[-2000:])
    else:  # the headroom held: nothing to complain about
        assert [s["recording"] for s in states] == ["ok"], states
        assert "disk full" not in stderr, stderr[-3000:]
    index = SegmentIndex.for_data_dir(small_partition)
    try:
        end = index.covered_until("rec1")
        # The newest video: recorded up to a segment (2 s of stream at pace 4) before the end.
        assert end is not None and end > the_end - 5, (end, the_end, states)
    finally:
        index.close()


def test_gateway_starts_on_a_full_disk_and_says_degraded(small_partition: Path) -> None:
    """The whole gateway (recorder, outbox, audit) starts on a partition filled to the last byte,
    and its status says ``degraded`` with the reason, not ``online`` with a warning; once space
    is freed it says ``online`` again."""
    from guetteur.config import validate_config
    from guetteur.runtime.gateway import Gateway
    from guetteur.uplink import protocol
    from tests.contract import validate_payload

    data = small_partition / "gw"
    config = validate_config(
        {
            "gateway_id": "gw-full",
            "data_dir": str(data),
            "mqtt": {"url": "mqtt://127.0.0.1:1"},  # never connected: nothing is started
            "cameras": [{"id": "street", "url": "test:quiet"}],
        }
    )
    first = Gateway(config)  # a first run: databases and the reserve file in place
    assert first.outbox is not None
    first.outbox.submit(event_item("gw-full", "street", 1))  # undelivered: the link never came
    first.stop()
    assert reserve.reserve_path(data).exists()
    ballast = fill(small_partition)
    gateway = Gateway(config)  # before: traceback in reconcile -> clear_writing
    try:
        assert gateway.recorder is not None and gateway.outbox is not None
        # The undelivered event is still there (before: the database, unopenable on a full
        # disk, was moved aside as corrupt, its items lost).
        assert gateway.outbox.depth()["events"] == 1
        assert not list((data / "outbox").glob("*corrupt*"))
        gateway.recorder.purge_now()
        status = validate_payload("gateway-status", protocol.dumps(gateway.status_message()))
        assert status["state"] == "degraded"
        reason = status["reason"]  # for the operator: French first, then English
        assert reason.index("presque pleine") < reason.index(" / ") < reason.index("short of"), (
            status
        )
        assert "recording degraded" in gateway.summary()
        ballast.unlink()
        gateway.recorder.purge_now()
        status = validate_payload("gateway-status", protocol.dumps(gateway.status_message()))
        assert status["state"] == "online" and "reason" not in status, status
    finally:
        gateway.stop()
