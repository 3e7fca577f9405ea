"""Seals that bind the evidence and the recordings to the audit chain.

The audit row that writes or changes a ``consent_evidence`` or ``recordings`` row carries, in
its details, a *seal* of that row's content as it then is::

    "row": {"v": 1, "table": "recordings", "id": "…", "sha256": "…", "fields": "a1b2c3…"}

``sha256`` covers the canonical JSON of every sealed column; ``fields`` is six hex digits per
column (in :data:`SEALED` order), so the verifier can say *which* column differs. The details
are hashed into the chain, so a seal cannot be edited either. :class:`SealChecker` remembers
the latest seal of each row while ``audit.verify`` walks the chain, then reads both tables
and names every row that was edited (and its columns), deleted, or inserted without an audit
row.

One change is sealed by its effect rather than by a hash: a retention purge (hot path, a
hundred thousand rows a batch) writes ``recording.purged`` without a seal. Its effect is known
(``state`` becomes ``purged``, ``purged_at`` the audit row's time, ``purge_reason`` its
reason), so the row, with those three columns put back, must match the seal before it.

Not sealed: ``recordings.pbx_ref`` (the PBX's handle, learnt after the start) and
``recordings.last_error`` (the finalizer's note of a transient failure); neither is evidence.
Rows written before seals existed are counted as *unsealed*, not reported as tampered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.store.models import AuditEntry, Call, ConsentRecord, Recording

SEAL_VERSION = 1
_DIGITS = 6  # hex digits per column in "fields": enough to name a column, not to guess it

SEALED: dict[str, tuple[str, ...]] = {
    "consent_evidence": (
        "id", "call_id", "kind", "status", "method", "actor", "legal_basis", "prompt_id",
        "prompt_sha256", "language", "digits", "prompts", "attempts", "policy", "pbx_call_id",
        "pbx_channel_id", "decided_at",
    ),
    "recordings": (
        "id", "call_id", "state", "spool_path", "format", "sample_rate", "channels",
        "pbx_channel", "retention_category", "started_at", "closed_at", "duration_ms",
        "plaintext_size", "plaintext_sha256", "ciphertext_path", "ciphertext_size",
        "ciphertext_sha256", "key_epoch", "encrypted_at", "expires_at", "legal_hold",
        "hold_reason", "hold_key", "discarded_at", "discard_reason", "purged_at",
        "purge_reason",
    ),
}  # fmt: skip
_NAMES_JSON = {table: [json.dumps(n) for n in names] for table, names in SEALED.items()}
_MODELS: dict[str, type[ConsentRecord] | type[Recording]] = {
    "consent_evidence": ConsentRecord,
    "recordings": Recording,
}
# audit actions that wrote these rows before seals existed (the row id: a details key, or
# None for the subject id)
_LEGACY = {
    "consent.decision": ("consent_evidence", "consent_id"),
    "consent.change": ("consent_evidence", "change_id"),
    "recording.started": ("recordings", None),
}
_PURGE_ACTION = "recording.purged"
# audit actions that set a call's consent status (details: "status"; "call_id" if the
# subject is not the call)
_STATUS_ACTIONS = {"consent.decision", "consent.change", "recording.imported"}
_READ_ACTIONS = _STATUS_ACTIONS | set(_LEGACY) | {_PURGE_ACTION}
_UNPURGED = {"state": "encrypted", "purged_at": None, "purge_reason": None}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


# json.dumps with these options builds an encoder per call; this one is built once (it keeps
# no state between calls) and writes the same text (tests/recorder/store/test_rowseal.py)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def _encode_json(value: Any) -> str:
    """A column's value as the seal writes it: canonical JSON (what :func:`_encode` gives),
    i.e. ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=str)``."""
    return _CANONICAL.encode(_plain(value))


def _encode(value: Any) -> str:
    """:func:`_encode_json`, without building a JSON encoder for the common scalars (a call
    seals about a hundred columns on the hot path): a string is what ``json.dumps`` writes
    for it (the same C escaper), an int its ``repr``, a bool ``true``/``false``, a datetime its
    string; anything else (float, lists, dicts) goes through the JSON encoder itself. A test
    keeps them equal."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is datetime:
        return encode_basestring(_plain(value))
    return _encode_json(value)


def content(row: ConsentRecord | Recording) -> dict[str, Any]:
    """The sealed columns of a row, by name."""
    return {name: getattr(row, name) for name in SEALED[row.__tablename__]}


# per table, built once: each column's name as the body writes it ("name":) and as its field
# digest starts (name NUL), and the body's opening
_BODY_NAMES = {table: [f"{n}:" for n in names] for table, names in _NAMES_JSON.items()}
_FIELD_NAMES = {table: [f"{n}\0" for n in names] for table, names in SEALED.items()}
_BODY_OPEN = {table: f'{{"table":{json.dumps(table)},"row":{{' for table in SEALED}


def seal_of(table: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The seal of a row (its sealed columns by name): ``sha256`` of
    ``{"table":<table>,"row":{<column>:<value>,…}}`` and, per column, six hex digits of the
    SHA-256 of ``<table> NUL <id> NUL <column> NUL <value>`` (values in canonical JSON)."""
    encoded = [_encode(values[name]) for name in SEALED[table]]
    body = ",".join([n + e for n, e in zip(_BODY_NAMES[table], encoded, strict=True)])
    row_id = str(values["id"])
    sha256 = hashlib.sha256
    prefix = f"{table}\0{row_id}\0"
    fields = "".join(
        [
            sha256((prefix + n + e).encode()).hexdigest()[:_DIGITS]
            for n, e in zip(_FIELD_NAMES[table], encoded, strict=True)
        ]
    )
    return {
        "v": SEAL_VERSION,
        "table": table,
        "id": row_id,
        "sha256": sha256(f"{_BODY_OPEN[table]}{body}}}}}".encode()).hexdigest(),
        "fields": fields,
    }


def columns(table: str) -> list[Any]:
    """The sealed columns of ``table``, to select (Core)."""
    t = _MODELS[table].__table__
    return [t.c[name] for name in SEALED[table]]


def _default(table: str, name: str) -> Any:
    default = _MODELS[table].__table__.c[name].default
    if default is None:
        return None
    if default.is_scalar:
        return default.arg
    return default.arg(None)  # a callable default (list, dict), as SQLAlchemy wraps it


def seal_insert(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The seal of a row a Core ``insert(row)`` writes (its columns' defaults filled in)."""
    return seal_of(table, {n: row[n] if n in row else _default(table, n) for n in SEALED[table]})


def seal(row: ConsentRecord | Recording) -> dict[str, Any]:
    """The seal of a row as it is now (flush a new row first: its defaults are set then)."""
    return seal_of(row.__tablename__, content(row))


def differing(table: str, sealed: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The columns whose digest differs between a seal and a row's current seal."""
    a, b = str(sealed.get("fields", "")), now["fields"]
    cut = [slice(i * _DIGITS, (i + 1) * _DIGITS) for i in range(len(SEALED[table]))]
    return [n for n, part in zip(SEALED[table], cut, strict=True) if a[part] != b[part]]


@dataclass(frozen=True, slots=True)
class RowProblem:
    table: str
    id: str
    seq: int | None  # the audit row that last sealed it (None: none did)
    what: str

    def __str__(self) -> str:
        return f"{self.table} {self.id}: {self.what}"


@dataclass(frozen=True, slots=True)
class _Purge:
    seq: int
    at: datetime
    reason: str


@dataclass
class SealChecker:
    """Fed every audit row in chain order (:meth:`observe`), then :meth:`check` the tables."""

    latest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    purges: dict[str, _Purge] = field(default_factory=dict)
    legacy: set[tuple[str, str]] = field(default_factory=set)
    call_status: dict[str, tuple[int, str]] = field(default_factory=dict)  # (seq, status)
    sealed_rows: int = 0
    unsealed_rows: int = 0

    def observe(self, entry: AuditEntry) -> None:
        action = entry.action
        sealed = '"row":' in entry.details
        if not sealed and action not in _READ_ACTIONS:
            return  # most rows: nothing to read
        details = json.loads(entry.details)
        if not isinstance(details, dict):
            return
        if action in _STATUS_ACTIONS and isinstance(status := details.get("status"), str):
            call_id = entry.subject_id if entry.subject_type == "call" else details.get("call_id")
            if call_id:
                self.call_status[str(call_id)] = (entry.seq, status)
        row = details.get("row") if sealed else None
        if isinstance(row, dict) and row.get("table") in SEALED:
            key = (row["table"], str(row.get("id")))
            self.latest[key] = (entry.seq, row)
            if key[0] == "recordings":
                self.purges.pop(key[1], None)
        elif action == _PURGE_ACTION and entry.subject_id:
            reason = str(details.get("reason", ""))
            self.purges[entry.subject_id] = _Purge(entry.seq, entry.at, reason)
        elif action in _LEGACY:
            table, key_name = _LEGACY[action]
            row_id = entry.subject_id if key_name is None else details.get(key_name)
            if row_id:
                self.legacy.add((table, str(row_id)))

    def check(self, session: Session, batch: int = 2000) -> list[RowProblem]:
        problems: list[RowProblem] = []
        for table, model in _MODELS.items():
            seen: set[str] = set()
            for row in session.execute(select(model).execution_options(yield_per=batch)).scalars():
                seen.add(row.id)
                values = content(row)
                problem = self._check_row(table, row.id, values)
                if problem is not None:
                    problems.append(problem)
            session.expunge_all()
            for (t, row_id), (seq, _) in self.latest.items():
                if t == table and row_id not in seen:
                    problems.append(
                        RowProblem(table, row_id, seq, f"deleted (audit row {seq} recorded it)")
                    )
        problems += self._check_call_status(session, batch)
        return problems

    def _check_row(self, table: str, row_id: str, values: dict[str, Any]) -> RowProblem | None:
        known = self.latest.get((table, row_id))
        if known is None:
            if (table, row_id) in self.legacy:
                self.unsealed_rows += 1
                return None
            return RowProblem(table, row_id, None, "inserted without an audit row recording it")
        seq, sealed = known
        purge = self.purges.get(row_id) if table == "recordings" else None
        if purge is not None:  # the seal before the purge, with the purge's known effect
            after = {"state": "purged", "purged_at": purge.at, "purge_reason": purge.reason}
            moved = [n for n, v in after.items() if _encode(values[n]) != _encode(v)]
            if moved:
                return RowProblem(
                    table, row_id, purge.seq,
                    f"edited: {', '.join(moved)} differ from the purge in audit row {purge.seq}",
                )  # fmt: skip
            values = values | _UNPURGED
        now = seal_of(table, values)
        if now["sha256"] == sealed.get("sha256"):
            self.sealed_rows += 1
            return None
        columns = differing(table, sealed, now) or ["(its content)"]
        return RowProblem(
            table, row_id, seq, f"edited: {', '.join(columns)} differ from audit row {seq}"
        )

    def _check_call_status(self, session: Session, batch: int) -> list[RowProblem]:
        """``calls.consent_status`` must be the status the call's latest consent audit row
        gave it (none: no status), so a status cannot be changed behind the log's back."""
        problems = []
        q = select(Call.id, Call.pbx, Call.consent_status).execution_options(yield_per=batch)
        for call_id, pbx, status in session.execute(q):
            seq, expected = self.call_status.get(call_id, (None, None))
            if seq is None and pbx == "import":
                continue  # imported before imports audited their status: nothing to compare
            if status != expected:
                said = f"audit row {seq} set {expected!r}" if seq else "no audit row set one"
                problems.append(
                    RowProblem(
                        "calls", call_id, seq, f"edited: consent_status is {status!r}, {said}"
                    )
                )
        return problems
