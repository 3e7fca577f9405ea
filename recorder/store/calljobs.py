"""The ledger's hot writes as group-commit jobs (:mod:`recorder.store.writer`): SQLAlchemy Core
statements, each job one call's change and its audit row, with the same rows, values and
audit details the ORM versions wrote (``tests/recorder/store`` compares them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from recorder.store.models import Call, ConsentRecord, Recording, RecordingState
from recorder.store.numbers import ProtectedNumber
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


_REF_COLUMNS = (
    CALLS.c.id,
    CALLS.c.pbx,
    CALLS.c.pbx_call_id,
    CALLS.c.campaign,
    CALLS.c.direction,
    CALLS.c.consent_status,
)


def find_call(b: Batch, node: str, pbx: str, pbx_call_id: str) -> CallRef | None:
    row = b.conn.execute(
        select(*_REF_COLUMNS).where(
            CALLS.c.node == node, CALLS.c.pbx == pbx, CALLS.c.pbx_call_id == pbx_call_id
        )
    ).first()
    return CallRef(*row) if row else None


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
    b.conn.execute(
        insert(CALLS),
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


def _campaign_of(b: Batch, call_id: str) -> str:
    campaign = b.conn.execute(select(CALLS.c.campaign).where(CALLS.c.id == call_id)).scalar()
    if campaign is None:
        raise LedgerError(f"no call with id {call_id}")
    return campaign


def log_consent(b: Batch, call_id: str, row: dict[str, Any]) -> None:
    """The call's one consent decision (``row``: the evidence row) and its audit row."""
    campaign = _campaign_of(b, call_id)
    b.conn.execute(insert(EVIDENCE), row)
    b.conn.execute(update(CALLS).where(CALLS.c.id == call_id).values(consent_status=row["status"]))
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
        },
    )


def recording_started(b: Batch, row: dict[str, Any], actor: str | None) -> None:
    """Register a recording (``row``) before the PBX writes a byte of it."""
    _campaign_of(b, row["call_id"])
    b.conn.execute(insert(RECORDINGS), row)
    b.audit(
        actor=actor or SYSTEM_ACTOR,
        action="recording.started",
        subject_type="recording",
        subject_id=row["id"],
        details={"call_id": row["call_id"], "format": row["format"], "channels": row["channels"]},
    )


def set_pbx_ref(b: Batch, recording_id: str, pbx_ref: str) -> None:
    done = b.conn.execute(
        update(RECORDINGS).where(RECORDINGS.c.id == recording_id).values(pbx_ref=pbx_ref)
    )
    if done.rowcount == 0:
        raise LedgerError(f"no recording with id {recording_id}")


def _recording(b: Batch, recording_id: str) -> tuple[str, str]:
    row = b.conn.execute(
        select(RECORDINGS.c.state, RECORDINGS.c.call_id).where(RECORDINGS.c.id == recording_id)
    ).first()
    if row is None:
        raise LedgerError(f"no recording with id {recording_id}")
    return row[0], row[1]


def recording_closed(b: Batch, recording_id: str, now: datetime) -> bool:
    """False if it was already closed or discarded (PBXs report a close more than once)."""
    state, call_id = _recording(b, recording_id)
    if state != RecordingState.RECORDING.value:
        return False
    b.conn.execute(
        update(RECORDINGS)
        .where(RECORDINGS.c.id == recording_id)
        .values(state=RecordingState.CLOSED.value, closed_at=now)
    )
    b.audit(
        actor=SYSTEM_ACTOR,
        action="recording.closed",
        subject_type="recording",
        subject_id=recording_id,
        details={"call_id": call_id},
    )
    return True


def discard(b: Batch, recording_id: str, reason: str, actor: str | None, now: datetime) -> bool:
    """False if it was already discarded or purged."""
    state, call_id = _recording(b, recording_id)
    if state not in _DISCARDABLE:
        return False
    b.conn.execute(
        update(RECORDINGS)
        .where(RECORDINGS.c.id == recording_id)
        .values(state=RecordingState.DISCARDED.value, discarded_at=now, discard_reason=reason[:64])
    )
    b.audit(
        actor=actor or SYSTEM_ACTOR,
        action="recording.discarded",
        subject_type="recording",
        subject_id=recording_id,
        details={"call_id": call_id, "reason": reason, "previous_state": state},
    )
    return True


def call_ended(b: Batch, call_id: str, now: datetime) -> None:
    found = b.conn.execute(select(CALLS.c.id, CALLS.c.ended_at).where(CALLS.c.id == call_id))
    row = found.first()
    if row is None:
        raise LedgerError(f"no call with id {call_id}")
    if row[1] is None:
        b.conn.execute(update(CALLS).where(CALLS.c.id == call_id).values(ended_at=now))
