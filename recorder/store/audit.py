"""The append-only, hash-chained audit log.

Each row carries the hash of the previous one; its own hash covers every column, so
``verify`` finds an edited, inserted or removed row and names it. Writers lock the one-row
``audit_head`` table (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
serialises writers), so the chain stays one line even with several daemons and CLIs writing
to one database. ``prev_hash`` is unique as well: a fork cannot be committed even by a writer
that bypassed the lock.

Audit rows never hold a phone number; :func:`append` refuses details that look like one.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pwd
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.store import rowseal
from recorder.store.models import AuditEntry, AuditHead, ConsentRecord, Recording

GENESIS_HASH = "0" * 64
# "+" and 6..15 digits, however written: +4915112345678, +49 151 12345678, +49 (151) 1234-5678
_LOOKS_LIKE_E164 = re.compile(r"\+\d(?:[ \-./()]*\d){5,14}")


def os_user() -> str:
    """The operating-system account doing this, recorded beside the named actor."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = getpass.getuser()
    sudo = os.environ.get("SUDO_USER") if os.geteuid() == 0 else None  # see invoking_os_user
    return f"{name} (sudo from {sudo})"[:64] if sudo and sudo != name else name


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who writes: the host and the OS user. One per process."""

    node: str = field(default_factory=socket.gethostname)
    os_user: str = field(default_factory=os_user)


# built once (json.dumps with these options builds one per call); it keeps no state between
# calls, so threads share it
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def canonical_json(data: Mapping[str, Any]) -> str:
    """``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=str)``: what every audit row's details are, byte for byte."""
    return _CANONICAL.encode(data)


def entry_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of every column but ``hash`` (docs/data-model.md):
    ``{"action":…,"actor":…,"at":…,"details":…,"node":…,"os_user":…,"prev_hash":…,"seq":…,
    "subject_id":…,"subject_type":…}``, i.e. ``canonical_json`` of those ten fields, written
    out directly because a purge hashes a hundred thousand of them (a test keeps the two equal).
    """
    get = entry.get if isinstance(entry, Mapping) else entry.__getattribute__
    return _hash(
        get("action"),
        get("actor"),
        _at(get("at")),
        get("details"),
        _s(get("node")),
        _s(get("os_user")),
        get("prev_hash"),
        get("seq"),
        get("subject_id"),
        get("subject_type"),
    )


def _hash(
    action: str,
    actor: str,
    at: str,
    details: str,
    node: str,
    os_user: str,
    prev_hash: str,
    seq: int,
    subject_id: str | None,
    subject_type: str,
) -> str:
    """``at``, ``node`` and ``os_user`` come JSON-encoded (a batch shares them), the rest raw."""
    body = (
        f'{{"action":{_s(action)},"actor":{_s(actor)},"at":{at},"details":{_s(details)},'
        f'"node":{node},"os_user":{os_user},"prev_hash":{_s(prev_hash)},"seq":{int(seq)},'
        f'"subject_id":{"null" if subject_id is None else _s(subject_id)},'
        f'"subject_type":{_s(subject_type)}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _at(moment: datetime) -> str:
    return f'"{moment.astimezone(UTC).isoformat(timespec="microseconds")}"'


# the string encoder json.dumps(ensure_ascii=False) uses
_s = json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # type: ignore[attr-defined]


def sealed(details: Mapping[str, Any], row: ConsentRecord | Recording) -> dict[str, Any]:
    """``details`` plus the seal of ``row`` as it now is (:mod:`recorder.store.rowseal`): the
    audit row that writes or changes an evidence or recording row carries it, and
    :func:`verify` names the row if its content later differs."""
    return {**details, "row": rowseal.seal(row)}


def _refuse_phone_numbers(details: Mapping[str, Any]) -> None:
    text = canonical_json(details)
    if _LOOKS_LIKE_E164.search(text):
        raise ValueError("audit details must not contain a phone number (found an E.164 number)")


def append(
    session: Session,
    ctx: AuditContext,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add one row at the tail, inside the caller's transaction (it commits with the change
    it describes, or not at all)."""
    details = dict(details or {})
    _refuse_phone_numbers(details)
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=1, seq=0, hash=GENESIS_HASH)
        session.add(head)
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    entry = AuditEntry(
        seq=head.seq + 1,
        at=moment,
        node=ctx.node[:64],
        os_user=ctx.os_user[:64],
        actor=actor[:64],
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        details=canonical_json(details),
        prev_hash=head.hash,
    )
    entry.hash = entry_hash(entry)
    session.add(entry)
    head.seq, head.hash = entry.seq, entry.hash
    session.flush()
    return entry


def append_many(
    session: Session, ctx: AuditContext, rows: list[dict[str, Any]], at: datetime | None = None
) -> int:
    """Append many rows under one lock of the tail (a purge batch): each row is a dict of
    ``actor, action, subject_type, subject_id, details``. Same chain, one round trip."""
    if not rows:
        return 0
    head = lock_head(session)
    return write_chain(session, head, chain(head, ctx, rows, at))


def lock_head(session: Session) -> AuditHead:
    """Lock the tail until the transaction ends: no other writer can append meanwhile."""
    return session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one()


def chain(
    head: AuditHead | tuple[int, str],
    ctx: AuditContext,
    rows: list[dict[str, Any]],
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The audit rows that would follow ``head`` (the head row, or ``(seq, hash)``), hashes
    included. No I/O: a caller may build them while other work of its transaction runs."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    node, os_user = ctx.node[:64], ctx.os_user[:64]
    seq, prev = (head.seq, head.hash) if isinstance(head, AuditHead) else head
    at_json, node_json, user_json = _at(moment), _s(node), _s(os_user)  # shared by every row
    encoded: dict[int, tuple[Any, str]] = {}  # details dict (kept alive) -> its JSON, checked
    values = []
    for row in rows:
        raw = row.get("details") or {}
        if (seen := encoded.get(id(raw))) is not None and seen[0] is raw:
            details = seen[1]  # a purge's rows share one details dict per category
        else:
            details = canonical_json(raw)
            if _LOOKS_LIKE_E164.search(details):
                raise ValueError("audit details must not contain a phone number")
            encoded[id(raw)] = (raw, details)
        seq += 1
        value = {
            "seq": seq,
            "at": moment,
            "node": node,
            "os_user": os_user,
            "actor": row["actor"][:64],
            "action": row["action"],
            "subject_type": row["subject_type"],
            "subject_id": row.get("subject_id"),
            "details": details,
            "prev_hash": prev,
        }
        value["hash"] = prev = _hash(
            value["action"],
            value["actor"],
            at_json,
            details,
            node_json,
            user_json,
            value["prev_hash"],
            seq,
            value["subject_id"],
            value["subject_type"],
        )
        values.append(value)
    return values


def write_chain(session: Session, head: AuditHead, values: list[dict[str, Any]]) -> int:
    """Insert rows built by :func:`chain` from this (locked) head, and move the head."""
    if not values:
        return 0
    if values[0]["prev_hash"] != head.hash:
        raise ValueError("these audit rows do not follow the current head")
    session.execute(AuditEntry.__table__.insert(), values)
    head.seq, head.hash = values[-1]["seq"], values[-1]["hash"]
    session.flush()
    return len(values)


@dataclass
class AuditReport:
    rows: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what): the chain
    content: list[rowseal.RowProblem] = field(default_factory=list)  # evidence, recordings
    sealed_rows: int = 0  # evidence and recording rows that match their latest seal
    unsealed_rows: int = 0  # written before seals existed: nothing to compare them with

    @property
    def ok(self) -> bool:
        return not self.problems and not self.content


def verify(session: Session, batch: int = 5000, *, content: bool = True) -> AuditReport:
    """Walk the whole chain in order and name every row that breaks it; then (``content``)
    compare every evidence and recording row with the seal its latest audit row gave it."""
    report = AuditReport()
    seals = rowseal.SealChecker()
    expected_seq, prev_hash = 1, GENESIS_HASH
    for entry in _walk(session, batch):
        report.rows += 1
        if entry.seq != expected_seq:  # rows come ordered by their unique seq: a gap
            missing = (
                f"row {expected_seq}"
                if entry.seq == expected_seq + 1
                else f"rows {expected_seq}..{entry.seq - 1}"
            )
            report.problems.append((expected_seq, f"{missing} removed (next row is {entry.seq})"))
        if entry.prev_hash != prev_hash:
            report.problems.append(
                (
                    entry.seq,
                    f"row {entry.seq} does not follow the row before it (prev_hash differs):"
                    " a row was inserted, removed or rewritten before it",
                )
            )
        if entry_hash(entry) != entry.hash:
            report.problems.append(
                (entry.seq, f"row {entry.seq} was edited (its hash does not match)")
            )
        expected_seq, prev_hash = entry.seq + 1, entry.hash
        if content:
            seals.observe(entry)
    head = session.get(AuditHead, 1)
    last_seq = expected_seq - 1
    if head is None:
        if report.rows:
            report.problems.append((last_seq, "the audit head row is missing"))
    elif head.seq != last_seq or head.hash != prev_hash:
        if head.seq > last_seq:
            report.problems.append(
                (last_seq + 1, f"rows {last_seq + 1}..{head.seq} removed from the end of the log")
            )
        else:
            report.problems.append((head.seq, "the audit head does not match the last row"))
    if content:
        report.content = seals.check(session)
        report.sealed_rows, report.unsealed_rows = seals.sealed_rows, seals.unsealed_rows
    return report


def export(
    session: Session, since: datetime | None = None, batch: int = 5000
) -> Iterator[dict[str, Any]]:
    """Rows at or after ``since`` in chain order, with their hashes, so an auditor can check
    the exported stretch on its own (each ``prev_hash`` is the hash of the row before)."""
    for entry in _walk(session, batch, since):
        yield {
            "seq": entry.seq,
            "at": entry.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "node": entry.node,
            "os_user": entry.os_user,
            "actor": entry.actor,
            "action": entry.action,
            "subject_type": entry.subject_type,
            "subject_id": entry.subject_id,
            "details": json.loads(entry.details),
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
        }


def _walk(session: Session, batch: int, since: datetime | None = None) -> Iterator[AuditEntry]:
    last = 0
    if since is not None:
        first = session.execute(
            select(AuditEntry.seq).where(AuditEntry.at >= since).order_by(AuditEntry.seq).limit(1)
        ).scalar_one_or_none()
        if first is None:
            return
        last = first - 1
    while True:
        rows = (
            session.execute(
                select(AuditEntry)
                .where(AuditEntry.seq > last)
                .order_by(AuditEntry.seq)
                .limit(batch)
            )
            .scalars()
            .all()
        )
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()
