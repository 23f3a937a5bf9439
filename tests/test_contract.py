"""docs/asyncapi.yaml and docs/schemas hang together: every reference resolves, every schema is
valid and used, every documented example obeys its schema, every topic of the design is there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from guetteur.uplink import protocol
from tests.contract import SCHEMAS, ContractError, kinds, validate, validator

DOC = SCHEMAS.parent / "asyncapi.yaml"


def load() -> dict[str, Any]:
    return yaml.safe_load(DOC.read_text())  # type: ignore[no-any-return]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    if ref.startswith("./"):
        path = DOC.parent / ref
        assert path.exists(), f"{ref} does not exist"
        return json.loads(path.read_text())
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref}: no {part!r}"
        node = node[part]
    return node


def test_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    doc = load()
    assert doc["asyncapi"] == "3.0.0"
    assert {"info", "channels", "operations", "components"} <= set(doc)
    for ref in refs(doc):
        resolve(doc, ref)
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = resolve(doc, op["channel"]["$ref"])
        assert channel["messages"], name


def test_every_schema_is_valid_and_used() -> None:
    used = {Path(r).stem for r in refs(load()) if r.startswith("./schemas/")}
    assert set(kinds()) == used
    for kind in kinds():
        validator(kind)  # checks the schema itself against draft 2020-12


def test_documented_examples_obey_their_schemas() -> None:
    doc = load()
    checked = 0
    for name, message in doc["components"]["messages"].items():
        payload_ref = message["payload"].get("$ref")
        for example in message.get("examples", []):
            assert payload_ref, f"{name}: example for a binary payload"
            validate(Path(payload_ref).stem, example["payload"])
            if "headers" in example:
                validate(Path(message["headers"]["$ref"]).stem, example["headers"])
            checked += 1
    assert checked >= 8


def test_every_topic_of_the_design_has_a_channel() -> None:
    addresses = {c["address"] for c in load()["channels"].values()}
    for topic in (
        "{root}/{gw}/status",
        "{root}/{gw}/cam/{cam}/status",
        "{root}/{gw}/cam/{cam}/event",
        "{root}/{gw}/cam/{cam}/snapshot",
        "{root}/{gw}/clip/{clip_id}/manifest",
        "{root}/{gw}/clip/{clip_id}/{n}",
        "{root}/{gw}/cam/{cam}/live/{session}",
        "{root}/{gw}/audit",
        "{root}/{gw}/ack",
        "{root}/{gw}/cmd/ptz",
        "{root}/{gw}/cmd/live.start",
    ):
        assert topic in addresses


def test_ptz_command_schema_speaks_the_protocols_ptz_vocabulary() -> None:
    schema = json.loads((SCHEMAS / "command-ptz.json").read_text())
    assert tuple(schema["properties"]["action"]["enum"]) == protocol.PTZ_ACTIONS
    assert set(protocol.PTZ_FIELDS) <= set(schema["properties"])
    assert schema["properties"]["speed"]["minimum"] == protocol.PTZ_SPEED[0]
    assert schema["properties"]["speed"]["maximum"] == protocol.PTZ_SPEED[1]
    assert schema["properties"]["preset"]["minimum"] == protocol.PTZ_FIRST_PRESET


@pytest.mark.parametrize(
    "kind,message,problem",
    [
        ("ack", {"v": 1, "ids": "a"}, "ids"),
        ("ack", {"v": 2, "ids": []}, "v"),
        (
            "event",
            {
                "v": 1,
                "id": "e:0",
                "event_id": "e",
                "seq": 0,
                "type": "begin",
                "gateway": "g",
                "camera": "c",
                "start": "2026-11-23T10:00:00.000Z",
                "time": "2026-11-23T10:00:00.000Z",
                "score": 0.1,
            },
            "type",
        ),
        ("reply", {"v": 1, "ok": False, "id": None}, "error"),
        (
            "clip-manifest",
            {
                "v": 1,
                "id": "clip:c:manifest",
                "clip_id": "c",
                "camera": "c",
                "size": 1,
                "sha256": "xyz",
                "chunk_size": 1,
                "count": 1,
            },
            "sha256",
        ),
    ],
)
def test_the_contract_refuses_bad_messages(
    kind: str, message: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ContractError, match=problem):
        validate(kind, message)
