"""The ledger's hot writes as group-commit jobs (:mod:`recorder.store.writer`): SQLAlchemy Core
statements, each job one call's change and its audit row, with the same rows, values and
audit details the ORM versions wrote (``tests/recorder/store`` compares them).

The statements are built once, here, with bound parameters, and run on the batch's DB-API
cursor (:mod:`recorder.store.prepared`): building a statement, and SQLAlchemy's execution
context around a built one, cost more than executing it (``bench/daemon_load.py``'s profile).
A change that only applies to a row in a given state is one ``UPDATE … WHERE state = …
RETURNING``; the row is looked up only when that finds nothing (unknown, or already done).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from recorder.store import rowseal
from recorder.store.models import Call, ConsentRecord, Recording, RecordingState
from recorder.store.numbers import ProtectedNumber
from recorder.store.prepared import Prepared
from recorder.store.writer import Batch

SYSTEM_ACTOR = "callconsent"
CALLS = Call.__table__
EVIDENCE = ConsentRecord.__table__
RECORDINGS = Recording.__table__
_DISCARDABLE = (
    RecordingState.RECORDING.value,
    RecordingState.CLOSED.value,
    RecordingState.ENCRYPTED.value,
)


class LedgerError(Exception):
    """A change the ledger refuses: unknown call or recording, or a state it cannot leave."""


@dataclass(frozen=True, slots=True)
class CallRef:
    id: str
    pbx: str
    pbx_call_id: str
    campaign: str
    direction: str
    consent_status: str | None


_FIND_CALL = Prepared(
    select(
        CALLS.c.id,
        CALLS.c.pbx,
        CALLS.c.pbx_call_id,
        CALLS.c.campaign,
        CALLS.c.direction,
        CALLS.c.consent_status,
    ).where(
        CALLS.c.node == bindparam("b_node"),
        CALLS.c.pbx == bindparam("b_pbx"),
        CALLS.c.pbx_call_id == bindparam("b_pbx_call_id"),
    )
)
_INSERT_CALL = Prepared(insert(CALLS))
_INSERT_EVIDENCE = Prepared(insert(EVIDENCE))
_INSERT_RECORDING = Prepared(insert(RECORDINGS))
_CALL_EXISTS = Prepared(select(CALLS.c.id).where(CALLS.c.id == bindparam("b_id")))
_DECIDED = Prepared(
    update(CALLS)
    .where(CALLS.c.id == bindparam("b_id"))
    .values(consent_status=bindparam("b_status"))
    .returning(CALLS.c.campaign)
)
_ENDED = Prepared(
    update(CALLS)
    .where(CALLS.c.id == bindparam("b_id"), CALLS.c.ended_at.is_(None))
    .values(ended_at=bindparam("b_now"))
)
_RECORDING = Prepared(
    select(RECORDINGS.c.state, RECORDINGS.c.call_id).where(RECORDINGS.c.id == bindparam("b_id"))
)
_PBX_REF = Prepared(
    update(RECORDINGS)
    .where(RECORDINGS.c.id == bindparam("b_id"))
    .values(pbx_ref=bindparam("b_ref"))
)
_CLOSED = Prepared(
    update(RECORDINGS)
    .where(
        RECORDINGS.c.id == bindparam("b_id"),
        RECORDINGS.c.state == RecordingState.RECORDING.value,
    )
    .values(state=RecordingState.CLOSED.value, closed_at=bindparam("b_now"))
    .returning(*rowseal.columns("recordings"))  # the row as changed: its seal, no second read
)
_DISCARDED = Prepared(
    update(RECORDINGS)
    .where(RECORDINGS.c.id == bindparam("b_id"))
    .values(
        state=RecordingState.DISCARDED.value,
        discarded_at=bindparam("b_now"),
        discard_reason=bindparam("b_reason"),
    )
    .returning(*rowseal.columns("recordings"))
)


def find_call(b: Batch, node: str, pbx: str, pbx_call_id: str) -> CallRef | None:
    row = _FIND_CALL.first(b, {"b_node": node, "b_pbx": pbx, "b_pbx_call_id": pbx_call_id})
    return CallRef(**row) if row else None


def open_call(
    b: Batch,
    *,
    node: str,
    pbx: str,
    pbx_call_id: str,
    campaign: str,
    direction: str,
    agent: str | None,
    number: ProtectedNumber,
    started_at: datetime,
) -> CallRef:
    """The call for this PBX call id, created on first sight (idempotent)."""
    found = find_call(b, node, pbx, pbx_call_id)
    if found is not None:
        return found
    call_id = str(uuid.uuid4())
    _INSERT_CALL.run(
        b,
        {
            "id": call_id, "pbx": pbx, "node": node, "pbx_call_id": pbx_call_id,
            "campaign": campaign, "direction": direction, "agent": agent,
            "number_kind": number.kind.value, "number_key": number.key,
            "number_enc": number.enc, "started_at": started_at,
        },
    )  # fmt: skip
    b.audit(
        actor=SYSTEM_ACTOR,
        action="call.opened",
        subject_type="call",
        subject_id=call_id,
        details={
            "pbx": pbx,
            "pbx_call_id": pbx_call_id,
            "campaign": campaign,
            "direction": direction,
            "number_kind": number.kind.value,
        },
    )
    return CallRef(call_id, pbx, pbx_call_id, campaign, direction, None)


def _call_exists(b: Batch, call_id: str) -> None:
    if _CALL_EXISTS.first(b, {"b_id": call_id}) is None:
        raise LedgerError(f"no call with id {call_id}")


def log_consent(b: Batch, call_id: str, row: dict[str, Any]) -> None:
    """The call's one consent decision (``row``: the evidence row) and its audit row."""
    decided = _DECIDED.first(b, {"b_id": call_id, "b_status": row["status"]})
    if decided is None:
        raise LedgerError(f"no call with id {call_id}")
    campaign = decided["campaign"]
    _INSERT_EVIDENCE.run(b, row)
    b.audit(
        actor=SYSTEM_ACTOR,
        action="consent.decision",
        subject_type="call",
        subject_id=call_id,
        details={
            "consent_id": row["id"],
            "status": row["status"],
            "method": row["method"],
            "legal_basis": row["legal_basis"],
            "campaign": campaign,
            "row": rowseal.seal_insert("consent_evidence", row),  # binds the evidence
        },
    )


def recording_started(
    b: Batch, row: dict[str, Any], actor: str | None, *, call_known: bool = False
) -> None:
    """Register a recording (``row``) before the PBX writes a byte of it. ``call_known``: the
    same transaction has just found the call (the accept key's decision updated its row)."""
    if not call_known:
        _call_exists(b, row["call_id"])
    _INSERT_RECORDING.run(b, row)
    b.audit(
        actor=actor or SYSTEM_ACTOR,
        action="recording.started",
        subject_type="recording",
        subject_id=row["id"],
        details={
            "call_id": row["call_id"],
            "format": row["format"],
            "channels": row["channels"],
            "row": rowseal.seal_insert("recordings", row),
        },
    )


def set_pbx_ref(b: Batch, recording_id: str, pbx_ref: str) -> None:
    if _PBX_REF.run(b, {"b_id": recording_id, "b_ref": pbx_ref}).rowcount == 0:
        raise LedgerError(f"no recording with id {recording_id}")


def _recording(b: Batch, recording_id: str) -> tuple[str, str]:
    row = _RECORDING.first(b, {"b_id": recording_id})
    if row is None:
        raise LedgerError(f"no recording with id {recording_id}")
    return row["state"], row["call_id"]


def recording_closed(b: Batch, recording_id: str, now: datetime) -> bool:
    """False if it was already closed or discarded (PBXs report a close more than once)."""
    after = _CLOSED.first(b, {"b_id": recording_id, "b_now": now})
    if after is None:
        _recording(b, recording_id)  # unknown: raises; known: it was closed before
        return False
    b.audit(
        actor=SYSTEM_ACTOR,
        action="recording.closed",
        subject_type="recording",
        subject_id=recording_id,
        details={
            "call_id": after["call_id"],
            "row": rowseal.seal_of("recordings", after),  # as the UPDATE left it
        },
    )
    return True


def discard(b: Batch, recording_id: str, reason: str, actor: str | None, now: datetime) -> bool:
    """False if it was already discarded or purged."""
    state, call_id = _recording(b, recording_id)
    if state not in _DISCARDABLE:
        return False
    after = _DISCARDED.first(b, {"b_id": recording_id, "b_now": now, "b_reason": reason[:64]})
    assert after is not None  # the row was just read in this transaction
    b.audit(
        actor=actor or SYSTEM_ACTOR,
        action="recording.discarded",
        subject_type="recording",
        subject_id=recording_id,
        details={
            "call_id": call_id,
            "reason": reason,
            "previous_state": state,
            "row": rowseal.seal_of("recordings", after),
        },
    )
    return True


def recording_paused(
    b: Batch, recording_id: str, paused: bool, actor: str | None, now: datetime
) -> None:
    """The PBX muted (or unmuted) the recording at ``now``: an audit row, nothing in the
    recording's row or the evidence. The paused stretch is silence in the file, so the row's
    time, less the recording's start, places it on the player's waveform."""
    _, call_id = _recording(b, recording_id)
    b.audit(
        actor=actor or SYSTEM_ACTOR,
        action="recording.paused" if paused else "recording.resumed",
        subject_type="recording",
        subject_id=recording_id,
        details={"call_id": call_id},
        at=now,
    )


def call_ended(b: Batch, call_id: str, now: datetime) -> None:
    if _ENDED.run(b, {"b_id": call_id, "b_now": now}).rowcount == 0:
        _call_exists(b, call_id)  # unknown: raises; known: it had ended before
