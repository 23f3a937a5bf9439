"""Fuzzing the centre receiver's message parsers and store (Hypothesis, bounded examples).

What a gateway sends can be anything: corrupt, hostile, or from a newer release. Whatever it is,
the receiver never raises, never allocates in proportion to a declared size, answers each message
that names an item (stored, or refused and acknowledged), and goes on storing afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guetteur.centre.receiver.parse import Incoming, Limits, Refusal, parse
from guetteur.centre.receiver.store import Store
from guetteur.uplink import protocol
from tests.centre.helpers import ROOT, event_msg, make_store

LIMITS = Limits()
KINDS = ["status", "cam/c1/status", "cam/c1/event", "cam/c1/snapshot", "audit", "clip/k1/manifest",
         "clip/k1/0", "clip/k1/7", "cam/+/event", "clip/../manifest", "cmd/ptz", "ack", ""]  # fmt: skip

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
FIELDS = ["id", "clip_id", "event_id", "type", "seq", "size", "chunk_size", "count", "sha256",
          "chunk_sha256", "state", "action", "operator", "request_id", "labels", "score", "v"]  # fmt: skip
messages_like_ours = st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=10)
huge = st.integers(min_value=0, max_value=10**40)
manifests = st.fixed_dictionaries(
    {
        "clip_id": st.sampled_from(["k1", "k2", "../x", ""]),
        "camera": st.sampled_from(["c1", None, 3]),
        "size": huge,
        "chunk_size": huge,
        "count": huge,
        "sha256": st.sampled_from(["0" * 64, "f" * 63, None]),
    }
)
props = st.dictionaries(
    st.sampled_from(["item_id", "epoch", "cseq", "event_id", "time", "request_id"]),
    st.one_of(st.text(max_size=30), st.integers(0, 10**20).map(str)),
    max_size=4,
)


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        messages_like_ours.map(lambda d: json.dumps(d).encode()),
        manifests.map(lambda d: json.dumps(d).encode()),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 5000).map(lambda n: b'{"id":"x","seq":' + b"9" * n + b"}"),
    )


def incoming() -> st.SearchStrategy[Incoming]:
    return st.builds(
        lambda gw, kind, payload, p, retain: Incoming(
            f"{ROOT}/{gw}/{kind}", payload, p, None, qos=1, retain=retain
        ),
        st.sampled_from(["gw1", "gw-2", "bad gw", "+", ""]),
        st.sampled_from(KINDS),
        payloads(),
        props,
        st.booleans(),
    )


@settings(max_examples=400, deadline=None)
@given(incoming())
def test_parse_never_raises_and_refusals_say_why(message: Incoming) -> None:
    result = parse(message, ROOT, LIMITS)
    if isinstance(result, Refusal):
        assert result.reason
        assert result.ack == (result.item_id is not None)
        if result.ack:
            assert result.gateway is not None and len(result.item_id or "") <= 200


@settings(max_examples=200, deadline=None)
@given(manifests)
def test_declared_sizes_beyond_the_limits_are_refused(manifest: dict[str, Any]) -> None:
    message = Incoming(f"{ROOT}/gw1/clip/k1/manifest", protocol.dumps(manifest), {}, None)
    result = parse(message, ROOT, LIMITS)
    too_big = any(
        isinstance(manifest[k], int) and manifest[k] > limit
        for k, limit in (
            ("size", LIMITS.max_clip_bytes),
            ("chunk_size", LIMITS.max_chunk_bytes),
            ("count", LIMITS.max_chunks),
        )
    )
    if too_big:
        assert isinstance(result, Refusal) and result.ack
        assert result.item_id == "clip:k1:manifest"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder: Path = tmp_path_factory.mktemp("fuzz-store")
    return make_store(f"sqlite:///{folder / 'centre.db'}", folder / "media")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(incoming(), min_size=1, max_size=8))
def test_the_store_survives_any_batch_and_goes_on_storing(
    store: Store, batch: list[Incoming]
) -> None:
    replies = store.handle_batch(batch)
    for gateway, ids in replies.ids.items():
        assert protocol.valid_id(gateway)
        assert all(isinstance(i, str) and i for i in ids)
    assert store.stats["failed"] == 0  # nothing broke a transaction
    before = store.stats["events"]
    n = before + 10**6
    store.handle_batch([event_msg(n, None)])  # an unordered event: stored at once
    assert store.stats["events"] == before + 1
