"""Fuzzing the gateway's side of acknowledgements (Hypothesis, bounded examples): how the agent
parses what the centre sends on ``{root}/{gw}/ack`` (``protocol.parse_ack``) and what the outbox
does with it (``Outbox._on_ack_message`` on the network thread, then the writer's commit).

Whatever arrives — garbage, hostile or from a newer centre — is either an ack or refused with a
``MessageError``, nothing escapes to paho's network thread, and the outbox's state stays exactly
what the well-formed acks say: an item leaves only when a valid ack names it, a chunk comes back
only when a valid ``resend`` names a chunk of a clip still queued, and the byte count matches the
database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guetteur.config import OutboxConfig
from guetteur.uplink import protocol
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.outbox.store import OutboxStore
from tests.test_outbox import GW, event, make_clip, snapshot
from tests.test_outbox_service import MemoryLink, Message

CLIP = "clipF"
CHUNK = 1024
CLIP_SIZE = 3600  # four chunks
EVENTS = [f"ev{n}:0" for n in range(4)]
CHUNKS = [protocol.clip_chunk_item_id(CLIP, n) for n in range(4)]
MANIFEST = protocol.clip_manifest_item_id(CLIP)
KNOWN = [*EVENTS, "ev1:0:snap", MANIFEST, *CHUNKS]
OTHER_IDS = ["", "ev9:0", "clip:clipF:4", "clip:clipF:-1", "clip:clipF:99999999999999999999",
             "clip:../x:0", "clip:clipF", "clip:clipG:0", "x" * 300, "\u00e9\u2603", "clip:clipF:0:0"]  # fmt: skip

ids = st.lists(st.one_of(st.sampled_from(KNOWN + OTHER_IDS), st.text(max_size=20)), max_size=6)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**25), 10**25), st.floats(), st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
ack_like = st.fixed_dictionaries(
    {"ids": st.one_of(ids, json_value)},
    optional={
        "resend": st.one_of(ids, json_value),
        "resync": st.one_of(st.booleans(), json_value),
        "v": st.sampled_from([1, 2, "1", None]),
        "extra": json_value,
    },
)


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


payloads = st.one_of(
    ack_like.map(encode),
    json_value.map(encode),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"[" * 5000 + b"]" * 5000,
            b'{"ids": [' + b"9" * 5000 + b"]}",
            b'{"ids": ["\\ud800"]}',
            b'{"ids": ["a"], "resync": NaN}',
            b'{"ids": ' + b'"a",' * 3 + b"]}",
            b"\xff\xfe{}",
            b'{"ids": []}' + b" " * (protocol.MAX_MESSAGE_BYTES + 1),
        ]
    ),
)


def queued(data: Path) -> set[str]:
    db = sqlite3.connect(data / "outbox" / "outbox.db")
    try:
        return {str(r[0]) for r in db.execute("SELECT item_id FROM items")}
    finally:
        db.close()


def expected_after(acks: list[protocol.Ack]) -> set[str]:
    """The model: what stays queued after these acks, applied in order."""
    left = set(KNOWN)
    clip_queued = True
    for ack in acks:
        if clip_queued and MANIFEST in ack.ids:  # the centre has the whole clip: it all goes
            left -= {MANIFEST, *CHUNKS}
            clip_queued = False
        left -= set(ack.ids)
        for item_id in ack.resend:
            if clip_queued and item_id in CHUNKS:
                left.add(item_id)  # an acknowledged chunk of a queued clip, asked for again
    return left


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(payloads, min_size=1, max_size=8))
def test_any_ack_payload_is_parsed_or_refused_and_leaves_the_outbox_consistent(
    tmp_path_factory: Any, messages: list[bytes]
) -> None:
    data = tmp_path_factory.mktemp("ackfuzz")
    link = MemoryLink()
    outbox = Outbox(OutboxConfig(chunk_bytes=CHUNK, retry_s=30.0), data, link, GW)
    clip, _ = make_clip(data, CLIP, CLIP_SIZE)
    outbox.submit_clip(clip)
    for n in range(4):
        outbox.submit(event(n))
    outbox.submit(snapshot(1))
    assert queued(data) == set(KNOWN)

    valid: list[protocol.Ack] = []
    refused = 0
    for payload in messages:
        try:
            ack = protocol.parse_ack(payload)
        except protocol.MessageError:
            refused += 1
        else:  # what a valid ack is made of
            assert all(isinstance(i, str) for i in [*ack.ids, *ack.resend])
            assert isinstance(ack.resync, bool)
            assert len(ack.ids) <= protocol.MAX_ACK_IDS
            valid.append(ack)
        # the network thread's callback: must return, whatever the payload
        link.subscriptions[link.topics.ack](Message(link.topics.ack, payload))
    outbox.close()  # commits the acks already received

    assert outbox.counters["bad_acks"] == refused
    assert queued(data) == expected_after(valid)
    clip_files = {p.name for p in (data / "outbox" / "clips").iterdir()}
    assert clip_files == ({f"{CLIP}.mp4"} if MANIFEST in expected_after(valid) else set())
    again = OutboxStore(data / "outbox", OutboxConfig().max_bytes)
    try:
        assert again.bytes == outbox.depth()["bytes"], "byte count drifted from the database"
    finally:
        again.close()
