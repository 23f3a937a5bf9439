"""The access register's hash chain (edited and deleted rows are named, on SQLite and on a real
PostgreSQL), its signed report, police extractions (exact bytes, signed manifest, offline
verification) and retention with judicial holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, select

from guetteur import keyfiles
from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import upgrade
from guetteur.centre.db.schema import clips, events, extractions, register, snapshots
from guetteur.centre.extraction import verify_extraction
from guetteur.centre.media import MediaStore
from guetteur.centre.register import Entry, Query, Register, row_hash
from guetteur.centre.retention import Retention
from guetteur.timeutil import iso_ms
from tests.centre.harness import Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guetteur", "centre", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def centre_yaml(folder: Path, database_url: str) -> Path:
    key = folder / "signing.pem"
    if not key.exists():
        keyfiles.generate(key)
    path = folder / "centre.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "centre_id": "csu-test",
                "database": {"url": database_url},
                "media_dir": str(folder / "media"),
                "signing_key_file": str(key),
            }
        )
    )
    return path


@pytest.mark.slow
def test_register_verify_names_an_edited_or_deleted_row(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = centre_yaml(tmp_path, database_url)
    db = Database(database_url)
    upgrade(db)
    reg = Register(db)
    for n in range(1, 9):
        reg.record(Entry("live.end", operator=f"op{n}", camera="cam1", detail={"n": n}))
    ok = cli("register", "-c", str(config), "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "8 rows" in ok.stdout and "intact" in ok.stdout

    def tamper(sql: str) -> None:
        if db.dialect == "postgresql":  # as an intruder with a psql prompt would
            server: PostgresServer = request.getfixturevalue("postgres")
            server.psql(database_url, sql)
        else:
            import sqlite3

            con = sqlite3.connect(database_url.removeprefix("sqlite:///"))
            con.execute(sql)
            con.commit()
            con.close()

    tamper("UPDATE register SET operator = 'someone-else' WHERE seq = 3")
    bad = cli("register", "-c", str(config), "verify")
    assert bad.returncode == 1
    assert "row 3 edited" in bad.stdout and "ALTERED" in bad.stdout

    # a careful intruder recomputes the edited row's hash: the next row no longer links to it
    with db.read() as conn:
        row = dict(conn.execute(select(register).where(register.c.seq == 3)).mappings().one())
    tamper(f"UPDATE register SET hash = '{row_hash(row['prev_hash'], row)}' WHERE seq = 3")
    bad = cli("register", "-c", str(config), "verify")
    assert "row 3 altered: row 4 does not link to it" in bad.stdout
    assert "row 3 edited" not in bad.stdout

    tamper("DELETE FROM register WHERE seq = 6")
    tamper("DELETE FROM register WHERE seq = 8")
    bad = cli("register", "-c", str(config), "verify")
    assert "row(s) 6 deleted" in bad.stdout
    assert "row(s) 8..8 deleted" in bad.stdout  # the tail, known from the head
    db.dispose()


@pytest.mark.slow
def test_register_csv_and_signed_report_verify_offline(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'centre.db'}"
    config = centre_yaml(tmp_path, url)
    db = Database(url)
    upgrade(db)
    reg = Register(db)
    reg.record(
        Entry("cmd.live.start", operator="op1", role="operator", camera="cam1", command_id="c1"),
        Entry("live.session", source="gateway", operator="op1", camera="cam1", command_id="c1"),
        Entry("cmd.ptz", operator="op2", role="operator", camera="dome"),
    )
    db.dispose()
    csv_file, report = tmp_path / "r.csv", tmp_path / "r.html"
    out = cli("register", "-c", str(config), "export", "--camera", "cam1",
              "--csv", str(csv_file), "--report", str(report))  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = csv_file.read_text().splitlines()
    assert len(lines) == 3 and "op1" in lines[1] and "dome" not in csv_file.read_text()
    assert lines[1].endswith(",2")  # the centre's row names its gateway record
    verified = cli("verify", str(report))
    assert verified.returncode == 0 and "signature valid" in verified.stdout
    public = tmp_path / "public.pem"
    public.write_bytes(
        keyfiles.public_pem(keyfiles.load_private(tmp_path / "signing.pem").public_key())
    )
    assert cli("verify", str(report), "--key", str(public)).returncode == 0
    other = tmp_path / "other.pem"
    other.write_bytes(
        keyfiles.public_pem(keyfiles.generate(tmp_path / "other-key.pem").public_key())
    )
    assert cli("verify", str(report), "--key", str(other)).returncode == 1
    report.write_text(report.read_text().replace("<td>op1</td>", "<td>op9</td>", 1))
    edited = cli("verify", str(report))
    assert edited.returncode == 1 and "differs from the signed content" in edited.stdout


@pytest.mark.slow
def test_a_police_extraction_is_the_recorded_bytes_with_a_signed_manifest(
    broker: MosquittoBroker,
    centre_server: Callable[..., Centre],
    real_gateway: Callable[..., Any],
    tmp_path: Path,
) -> None:
    centre = centre_server(broker)
    real_gateway(broker)
    sup = centre.login("sup1")
    wait_for(lambda: sup.ok("GET", "/api/gateways")["gateways"], 20, "the gateway")
    time.sleep(7)  # a few 2 s segments recorded
    now = time.time()
    spec = {"gateway": "gw1", "camera": "cam1", "from": iso_ms(now - 6), "to": iso_ms(now - 3),
            "requisition": "PV 2026/1234", "officer": "OPJ Durand"}  # fmt: skip
    assert centre.login("op1").error("POST", "/api/exports", spec) == (403, "forbidden")
    assert sup.error("POST", "/api/exports", {**spec, "requisition": " "})[1] == "bad_request"
    ext = sup.ok("POST", "/api/exports", spec)["extraction"]
    ext = wait_for(
        lambda: (
            (e := sup.ok("GET", f"/api/exports/{ext['id']}")["extraction"])["state"] != "requested"
            and e
        ),
        60,
        "the extraction to be ready",
    )
    assert ext["state"] == "ready", ext
    folder = tmp_path / "extraction"
    folder.mkdir()
    for url in ext["files"]:
        status, data, _ = sup.call("GET", url)
        assert status == 200
        (folder / url.rsplit("/", 1)[1]).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["requisition"] == "PV 2026/1234" and manifest["extracted_by"] == "sup1"
    assert manifest["camera"] == "cam1" and manifest["gateway"] == "gw1"
    video = folder / manifest["files"][0]["name"]
    # the exact bytes the gateway recorded and sent (the clip the receiver verified)
    with Database(centre.config.database.url).read() as conn:
        clip_path = conn.execute(
            select(clips.c.path).where(clips.c.clip_id == manifest["clip_id"])
        ).scalar_one()
    assert Path(clip_path).read_bytes() == video.read_bytes()
    assert verify_extraction(folder).ok
    assert cli("verify", str(folder)).returncode == 0

    original = video.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01  # one byte of the video
    video.write_bytes(bytes(flipped))
    check = cli("verify", str(folder))
    assert check.returncode == 1 and f"{video.name}: ALTERED" in check.stdout
    video.write_bytes(original)
    assert cli("verify", str(folder)).returncode == 0
    manifest["officer"] = "someone else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    forged = cli("verify", str(folder))
    assert forged.returncode == 1 and "altered after signing" in forged.stdout

    held = sup.ok("POST", f"/api/exports/{ext['id']}/hold", {"hold": True, "reason": "instruction"})
    assert held["extraction"]["hold"] is True
    rows = centre.login("aud1").ok("GET", "/api/register", action="export")["rows"]
    assert [r["action"] for r in rows if r["action"] != "export.download"] == [
        "export.request",
        "export.ready",
        "export.hold",
    ]
    assert len([r for r in rows if r["action"] == "export.download"]) == len(ext["files"])
    assert all(r["operator"] == "sup1" for r in rows)


def test_retention_purges_old_data_but_keeps_judicial_holds(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'centre.db'}")
    upgrade(db)
    media = MediaStore(tmp_path / "media")
    reg = Register(db)
    now = time.time()
    old, recent = iso_ms(now - 31 * 86400), iso_ms(now - 3600)
    sha_old, path_old = media.put(b"\xff\xd8old", "jpg")
    sha_new, path_new = media.put(b"\xff\xd8new", "jpg")
    held_dir, free_dir = tmp_path / "ext-held", tmp_path / "ext-free"
    for d in (held_dir, free_dir):
        d.mkdir()
    base: dict[str, Any] = {"requisition": "R", "officer": "O", "requested_by": "sup1",
                            "gateway": "gw1", "camera": "cam1", "range_from": old,
                            "range_to": old, "command_id": "c", "state": "ready"}  # fmt: skip
    with db.write() as conn:
        for i, when in enumerate((old, recent)):
            conn.execute(insert(events).values(gateway="gw1", item_id=f"e{i}", camera="cam1",
                                               received=when, message="{}"))  # fmt: skip
        for item, (sha, path, when) in {"s-old": (sha_old, path_old, old),
                                        "s-new": (sha_new, path_new, recent)}.items():  # fmt: skip
            conn.execute(insert(snapshots).values(gateway="gw1", item_id=item, sha256=sha,
                                                  path=str(path), bytes=5, received=when))  # fmt: skip
        conn.execute(insert(extractions).values(id="ext-held", folder=str(held_dir), created=old,
                                                hold=True, hold_reason="instruction", **base))  # fmt: skip
        conn.execute(insert(extractions).values(id="ext-free", folder=str(free_dir), created=old,
                                                hold=False, **base))  # fmt: skip
    counts = Retention(db, media, reg, 30).run()
    assert counts["events"] == 1 and counts["snapshots"] == 1 and counts["extractions"] == 1
    assert not path_old.exists() and path_new.exists()
    assert held_dir.exists() and not free_dir.exists()
    with db.read() as conn:
        assert list(conn.execute(select(events.c.item_id)).scalars()) == ["e1"]
        assert list(conn.execute(select(extractions.c.id)).scalars()) == ["ext-held"]
    rows = reg.query(Query())
    assert [r["action"] for r in rows] == ["export.purged", "retention.purge"]
    assert rows[1]["detail"]["kept_on_hold"] == 1
    db.dispose()


def test_retention_cannot_be_configured_past_thirty_days(tmp_path: Path) -> None:
    from guetteur.centre.config import validate_centre_config
    from guetteur.config import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_centre_config(
            {
                "centre_id": "c",
                "signing_key_file": "k",
                "retention": {"max_age_days": 45},
                "bogus": 1,
            }
        )
    assert info.value.problems == [
        "retention.max_age_days: Input should be less than or equal to 30",
        "bogus: unknown key",
    ]
