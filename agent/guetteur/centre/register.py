"""The access register: every live view, PTZ session, snapshot request, export, clip viewing and
account change, from both sides — the server's own rows (``source = centre``, written before the
action runs) and the gateways' audit records (``source = gateway``, stored by the receiver) —
joined by command id (and live session id).

Append-only by construction: row ``n`` carries ``hash = sha256(prev_hash ‖ canonical row)`` and
the hash of row ``n-1``; ``register_head`` holds the last sequence number and hash. Rows are
numbered under a lock on the head (``FOR UPDATE`` on PostgreSQL: several servers append to one
chain). ``verify`` names every edited or deleted row. A database administrator could rebuild the
whole chain; the signed reports (``report_html``) carry the head hash at their end, so a chain
rewritten after a report was handed out no longer matches it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import register, register_head
from guetteur.centre.keys import sign_document
from guetteur.timeutil import iso_ms
from guetteur.uplink.command_auth import canonical

GENESIS = "0" * 64
COLUMNS = (
    "seq",
    "time",
    "source",
    "action",
    "operator",
    "role",
    "gateway",
    "camera",
    "command_id",
    "session_id",
    "outcome",
    "detail",
)


@dataclass(frozen=True)
class Entry:
    """One row to append. ``detail``: anything else worth keeping (JSON)."""

    action: str
    source: str = "centre"
    operator: str | None = None
    role: str | None = None
    gateway: str | None = None
    camera: str | None = None
    command_id: str | None = None
    session_id: str | None = None
    outcome: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    time: str | None = None  # default: now


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    fields = {k: row.get(k) for k in COLUMNS}
    return hashlib.sha256(prev_hash.encode() + canonical(fields)).hexdigest()


@dataclass
class Verification:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    bad_rows: list[int] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = GENESIS

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Query:
    """Filters of a register query; None means any."""

    camera: str | None = None
    operator: str | None = None
    gateway: str | None = None
    action: str | None = None  # a prefix: "live" matches live.start, live.end...
    source: str | None = None
    since: str | None = None  # ISO times, inclusive / exclusive
    until: str | None = None
    command_id: str | None = None
    after_seq: int | None = None
    limit: int = 500


class Register:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- appending -----------------------------------------------------------------------------

    def append(self, conn: Connection, entry: Entry) -> int:
        """Append ``entry`` inside the caller's write transaction; returns its sequence number."""
        head = conn.execute(
            self.db.lock(select(register_head.c.seq, register_head.c.hash)).where(
                register_head.c.id == 1
            )
        ).first()
        if head is None:
            conn.execute(
                self.db.insert(register_head)
                .values(id=1, seq=0, hash=GENESIS)
                .on_conflict_do_nothing()
            )
            head = conn.execute(
                self.db.lock(select(register_head.c.seq, register_head.c.hash)).where(
                    register_head.c.id == 1
                )
            ).one()
        seq, prev = int(head[0]) + 1, str(head[1])
        row = {
            "seq": seq,
            "time": entry.time or iso_ms(self.clock()),
            "source": entry.source,
            "action": entry.action[:64],
            "operator": entry.operator,
            "role": entry.role,
            "gateway": entry.gateway,
            "camera": entry.camera,
            "command_id": entry.command_id,
            "session_id": entry.session_id,
            "outcome": entry.outcome[:64] if entry.outcome else None,
            "detail": canonical(entry.detail).decode(),
        }
        digest = row_hash(prev, row)
        conn.execute(register.insert().values(**row, prev_hash=prev, hash=digest))
        conn.execute(
            register_head.update().where(register_head.c.id == 1).values(seq=seq, hash=digest)
        )
        return seq

    def record(self, *entries: Entry) -> int:
        """Append in a transaction of its own (retried on a deadlock); returns the last seq."""
        for attempt in range(5):
            try:
                with self.db.write() as conn:
                    seq = 0
                    for entry in entries:
                        seq = self.append(conn, entry)
                    return seq
            except Exception as exc:
                if not self.db.retryable(exc) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    # -- verification --------------------------------------------------------------------------

    def verify(self, batch: int = 5000) -> Verification:
        """Walk the chain; every edited, deleted or re-linked row is named."""
        out = Verification()
        with self.db.read() as conn:
            head = conn.execute(
                select(register_head.c.seq, register_head.c.hash).where(register_head.c.id == 1)
            ).first()
            out.head_seq, out.head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS)
            expected_seq, prev = 1, GENESIS
            last = 0
            while True:
                rows = (
                    conn.execute(
                        select(register)
                        .where(register.c.seq > last)
                        .order_by(register.c.seq)
                        .limit(batch)
                    )
                    .mappings()
                    .all()
                )
                if not rows:
                    break
                for r in rows:
                    seq = int(r["seq"])
                    out.checked += 1
                    if seq != expected_seq:
                        gone = (
                            f"{expected_seq}"
                            if seq == expected_seq + 1
                            else f"{expected_seq}..{seq - 1}"
                        )
                        out.problems.append(f"row(s) {gone} deleted (the sequence jumps to {seq})")
                        out.bad_rows.extend(range(expected_seq, min(seq, expected_seq + 1000)))
                    elif r["prev_hash"] != prev:
                        out.problems.append(
                            f"row {seq - 1} altered: row {seq} does not link to it (its hash "
                            "was recomputed after an edit, or the row was replaced)"
                        )
                        out.bad_rows.append(seq - 1)
                    if row_hash(str(r["prev_hash"]), dict(r)) != r["hash"]:
                        out.problems.append(
                            f"row {seq} edited: its content does not match its hash"
                        )
                        out.bad_rows.append(seq)
                    prev, expected_seq, last = str(r["hash"]), seq + 1, seq
            if out.head_seq > last:
                out.problems.append(
                    f"row(s) {last + 1}..{out.head_seq} deleted: the register ends at {last} but "
                    f"its head records {out.head_seq}"
                )
                out.bad_rows.extend(range(last + 1, min(out.head_seq + 1, last + 1001)))
            elif out.head_seq < last or (last and out.head_hash != prev):
                out.problems.append(
                    f"the register head (row {out.head_seq}) does not match row {last}"
                )
        return out

    # -- queries -------------------------------------------------------------------------------

    def _where(self, q: Query) -> Any:
        c = register.c
        conds = []
        if q.camera:
            conds.append(c.camera == q.camera)
        if q.operator:
            conds.append(c.operator == q.operator)
        if q.gateway:
            conds.append(c.gateway == q.gateway)
        if q.action:
            conds.append(or_(c.action == q.action, c.action.startswith(q.action + ".")))
        if q.source:
            conds.append(c.source == q.source)
        if q.since:
            conds.append(c.time >= q.since)
        if q.until:
            conds.append(c.time < q.until)
        if q.command_id:
            conds.append(c.command_id == q.command_id)
        if q.after_seq is not None:
            conds.append(c.seq > q.after_seq)
        return and_(*conds) if conds else None

    def query(self, q: Query) -> list[dict[str, Any]]:
        """Rows matching ``q`` in sequence order; each with ``related``: the rows of the other
        side sharing its command id or live session id (the gateway's records of a centre
        command, the centre's request behind a gateway record)."""
        stmt = select(register).order_by(register.c.seq).limit(max(1, min(q.limit, 10000)))
        where = self._where(q)
        if where is not None:
            stmt = stmt.where(where)
        with self.db.read() as conn:
            rows = [_public(r) for r in conn.execute(stmt).mappings()]
            commands = {r["command_id"] for r in rows if r["command_id"]}
            sessions = {r["session_id"] for r in rows if r["session_id"]}
            related: dict[str, list[dict[str, Any]]] = {}
            if commands or sessions:
                conds = []
                if commands:
                    conds.append(register.c.command_id.in_(sorted(commands)[:1000]))
                if sessions:
                    conds.append(register.c.session_id.in_(sorted(sessions)[:1000]))
                for r in conn.execute(
                    select(register).where(or_(*conds)).order_by(register.c.seq)
                ).mappings():
                    row = _public(r)
                    for key in (row["command_id"], row["session_id"]):
                        if key:
                            related.setdefault(key, []).append(row)
        for row in rows:
            seen: dict[int, dict[str, Any]] = {}
            for key in (row["command_id"], row["session_id"]):
                for other in related.get(key, []) if key else []:
                    if other["source"] != row["source"]:
                        seen[other["seq"]] = other
            row["related"] = [seen[s] for s in sorted(seen)]
        return rows

    def count(self, q: Query) -> int:
        stmt = select(func.count()).select_from(register)
        where = self._where(q)
        if where is not None:
            stmt = stmt.where(where)
        with self.db.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def iter_rows(self, q: Query, batch: int = 2000) -> Iterator[dict[str, Any]]:
        """Every row matching ``q`` (no limit), for exports."""
        last = q.after_seq or 0
        while True:
            page = self.query(dataclasses.replace(q, after_seq=last, limit=batch))
            yield from page
            if len(page) < batch:
                return
            last = page[-1]["seq"]

    # -- exports -------------------------------------------------------------------------------

    def csv(self, q: Query) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*COLUMNS, "hash", "related"])
        for row in self.iter_rows(q):
            writer.writerow(
                [row[k] if k != "detail" else json.dumps(row[k]) for k in COLUMNS]
                + [row["hash"], " ".join(str(r["seq"]) for r in row["related"])]
            )
        return out.getvalue()

    def report(self, q: Query, centre: str, key: Ed25519PrivateKey) -> dict[str, Any]:
        """The signed record of a period: rows, the chain state, who asked, when."""
        rows = list(self.iter_rows(q))
        check = self.verify()
        return sign_document(
            {
                "kind": "guetteur.register-report",
                "centre": centre,
                "generated": iso_ms(self.clock()),
                "filters": {k: v for k, v in q.__dict__.items() if v is not None and k != "limit"},
                "chain": {
                    "verified": check.ok,
                    "problems": check.problems,
                    "head_seq": check.head_seq,
                    "head_hash": check.head_hash,
                },
                "rows": [{k: r[k] for k in (*COLUMNS, "hash")} for r in rows],
            },
            key,
        )


def _public(r: Any) -> dict[str, Any]:
    row = {k: r[k] for k in (*COLUMNS, "hash")}
    try:
        row["detail"] = json.loads(r["detail"])
    except ValueError:
        row["detail"] = {"raw": r["detail"]}
    return row


REPORT_MARK = "<!-- guetteur-signed-report:"


def report_html(report: dict[str, Any]) -> str:
    """The report as a page for people; the signed JSON rides inside it, so
    ``guetteur centre verify REPORT.html`` checks the very document that was handed out."""
    esc = html.escape
    head = ("n°", "heure (UTC) / time", "source", "action", "opérateur / operator", "rôle / role",
            "passerelle / gateway", "caméra / camera", "commande / command", "résultat / outcome")  # fmt: skip
    lines = [
        "<!DOCTYPE html>",
        '<html lang="fr"><head><meta charset="utf-8">',
        f"<title>Registre des accès / Access register — {esc(report['centre'])}</title>",
        "<style>body{font-family:sans-serif;font-size:12px}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 4px}th{background:#eee}</style></head><body>",
        f"<h1>Registre des accès / Access register — {esc(report['centre'])}</h1>",
        f"<p>Édité le / generated {esc(report['generated'])} — filtres / filters: "
        f"{esc(json.dumps(report['filters'], ensure_ascii=False))}</p>",
        f"<p>Chaîne / chain: {'vérifiée / verified' if report['chain']['verified'] else 'ALTÉRÉE / ALTERED'}"
        f" — tête / head n° {report['chain']['head_seq']} {esc(report['chain']['head_hash'])}</p>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
    ]
    for r in report["rows"]:
        cells = (r["seq"], r["time"], r["source"], r["action"], r["operator"], r["role"],
                 r["gateway"], r["camera"], r["command_id"], r["outcome"])  # fmt: skip
        lines.append(
            "<tr>"
            + "".join(f"<td>{esc('' if c is None else str(c))}</td>" for c in cells)
            + "</tr>"
        )
    sig = report["signature"]
    lines += [
        "</table>",
        f"<p>Signé par la clé / signed by key {esc(sig['key_id'])} (Ed25519). "
        "Vérifier / verify: <code>guetteur centre verify FICHIER.html</code></p>",
        "</body></html>",
        f"{REPORT_MARK} {json.dumps(report, ensure_ascii=True, separators=(',', ':'))} -->",
    ]
    return "\n".join(lines) + "\n"


def report_from_html(page: str) -> dict[str, Any] | None:
    at = page.rfind(REPORT_MARK)
    if at < 0:
        return None
    body = page[at + len(REPORT_MARK) :].strip()
    if body.endswith("-->"):
        body = body[:-3]
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
