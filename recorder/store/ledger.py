"""What the PBX adapters write down about a call: the call, its consent evidence, its
recordings and their life cycle. Every change commits together with its audit row.

The hot writes of a call (opened, decision, recording started/closed/discarded, ended) are
group-commit jobs (:mod:`recorder.store.calljobs`) that one writer thread commits many at a
time (:mod:`recorder.store.writer`): each method returns once its change is committed. The
synchronous methods block their thread until then; the ``*_async`` ones are for the event
loop and hold no thread while they wait. When a recording is closed or discarded, the ledger
tells its :class:`RecordingSink` (the finalizer) after the commit.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from consent_ivr.evidence import ConsentEvidence
from consent_ivr.status import ConsentStatus
from recorder.store import audit
from recorder.store import calljobs as jobs
from recorder.store.calljobs import CallRef, LedgerError
from recorder.store.db import Database
from recorder.store.models import Call, ConsentRecord, Recording, RecordingState
from recorder.store.numbers import NumberProtector
from recorder.store.writer import Batch, Job, StoreWriter

SYSTEM_ACTOR = "callconsent"
_T = TypeVar("_T")
__all__ = ["CallRef", "CallState", "Ledger", "LedgerError", "RecordingSink"]


class RecordingSink(Protocol):
    """Who hears that a recording's file is final, or must be destroyed (the finalizer)."""

    def recording_closed(self, recording_id: str) -> None: ...

    def recording_discarded(self, recording_id: str) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Ledger:
    def __init__(
        self,
        db: Database,
        numbers: NumberProtector,
        ctx: audit.AuditContext,
        *,
        sink: RecordingSink | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.numbers = numbers
        self.ctx = ctx
        self.sink = sink
        self._clock = clock
        self.writer = StoreWriter(db, ctx)

    # -- calls ---------------------------------------------------------------------------------

    def open_call(
        self,
        *,
        pbx: str,
        pbx_call_id: str,
        campaign: str,
        direction: str = "inbound",
        number: str | None = None,
        number_withheld: bool = False,
        agent: str | None = None,
    ) -> CallRef:
        """The call for this PBX call id, created on first sight (idempotent)."""
        job = self._open_call_job(
            pbx, pbx_call_id, campaign, direction, number, number_withheld, agent
        )
        try:
            return self.writer.run(job)
        except IntegrityError:
            return self._raced(pbx, pbx_call_id)

    async def open_call_async(
        self,
        *,
        pbx: str,
        pbx_call_id: str,
        campaign: str,
        direction: str = "inbound",
        number: str | None = None,
        number_withheld: bool = False,
        agent: str | None = None,
    ) -> CallRef:
        """:meth:`open_call` for the event loop (no worker thread waits for the commit)."""
        job = self._open_call_job(
            pbx, pbx_call_id, campaign, direction, number, number_withheld, agent
        )
        try:
            # lazy: the call's row only has to be durable with (or before) its evidence,
            # which is urgent and queued after it; the prompt starts at most LINGER_S later
            return await self._run(job, lazy=True)
        except IntegrityError:
            return await asyncio.to_thread(self._raced, pbx, pbx_call_id)

    def _open_call_job(
        self,
        pbx: str,
        pbx_call_id: str,
        campaign: str,
        direction: str,
        number: str | None,
        number_withheld: bool,
        agent: str | None,
    ) -> Job[CallRef]:
        return functools.partial(
            jobs.open_call,
            node=self.ctx.node[:64],
            pbx=pbx,
            pbx_call_id=pbx_call_id,
            campaign=campaign,
            direction=direction,
            agent=agent,
            number=self.numbers.protect(number, withheld=number_withheld),
            started_at=self._clock(),
        )

    def _raced(self, pbx: str, pbx_call_id: str) -> CallRef:
        """Another writer (another host on PostgreSQL) stored the same call first."""
        found = self.find_call(pbx, pbx_call_id)
        if found is None:
            raise LedgerError(f"call {pbx}/{pbx_call_id} could not be stored nor found")
        return found

    async def _run(self, job: Job[_T], *, lazy: bool = False, patient: bool = False) -> _T:
        """``lazy``: a change no caller is waiting on in a hurry; ``patient``: one nobody hears
        (see ``StoreWriter.submit``)."""
        return await self.writer.submit_async(job, lazy=lazy, patient=patient)

    def _by_pbx_id(self, pbx: str, pbx_call_id: str) -> Select[tuple[Call]]:
        """This node's call with that PBX call id (unique per node and PBX)."""
        return select(Call).where(
            Call.node == self.ctx.node[:64], Call.pbx == pbx, Call.pbx_call_id == pbx_call_id
        )

    def find_call(self, pbx: str, pbx_call_id: str) -> CallRef | None:
        with self.db.read() as s:
            call = s.execute(self._by_pbx_id(pbx, pbx_call_id)).scalar_one_or_none()
            return _ref(call) if call else None

    def call_ended(self, call_id: str) -> None:
        self.writer.run(functools.partial(jobs.call_ended, call_id=call_id, now=self._clock()))

    async def call_ended_async(self, call_id: str) -> None:
        job = functools.partial(jobs.call_ended, call_id=call_id, now=self._clock())
        await self._run(job, patient=True)  # after the hangup: nobody hears it

    # -- consent -------------------------------------------------------------------------------

    def log_consent(
        self,
        call_id: str,
        evidence: ConsentEvidence,
        *,
        prompt_digests: Mapping[str, str] | None = None,
        pbx_call_id: str | None = None,
        pbx_channel_id: str | None = None,
    ) -> None:
        """Keep the call's one consent decision as evidence. ``prompt_digests`` maps each
        prompt id to the SHA-256 of the audio file the caller heard."""
        row = self._evidence_row(call_id, evidence, prompt_digests, pbx_call_id, pbx_channel_id)
        self.writer.run(functools.partial(jobs.log_consent, call_id=call_id, row=row))

    async def log_consent_async(
        self,
        call_id: str,
        evidence: ConsentEvidence,
        *,
        prompt_digests: Mapping[str, str] | None = None,
        pbx_call_id: str | None = None,
        pbx_channel_id: str | None = None,
    ) -> None:
        """:meth:`log_consent` for the event loop: returns once the evidence is committed."""
        row = self._evidence_row(call_id, evidence, prompt_digests, pbx_call_id, pbx_channel_id)
        await self._run(functools.partial(jobs.log_consent, call_id=call_id, row=row))

    async def log_consent_and_start_async(
        self,
        call_id: str,
        evidence: ConsentEvidence,
        recording_id: str,
        *,
        prompt_digests: Mapping[str, str] | None = None,
        pbx_call_id: str | None = None,
        pbx_channel_id: str | None = None,
        **recording: Any,
    ) -> None:
        """The accept key's two writes, :meth:`log_consent_async` then
        :meth:`recording_started_async`, in ONE transaction (one commit, one fsync): the
        evidence is durable, and the recording registered, before the PBX is asked to record,
        at the cost of one commit on the caller's first words instead of two. ``recording``:
        the keywords of :meth:`recording_started`.

        If the pair cannot be committed, the evidence is committed on its own (a decision is
        never lost for a recording that could not be registered) and the pair's error raised."""
        row = self._evidence_row(call_id, evidence, prompt_digests, pbx_call_id, pbx_channel_id)
        decision = functools.partial(jobs.log_consent, call_id=call_id, row=row)
        start = self._recording_job(call_id, recording_id, **recording)

        def both(b: Batch) -> None:
            decision(b)  # raises if there is no such call
            start(b, call_known=True)

        try:
            await self._run(both)
        except Exception:
            await self._run(decision)
            raise

    @staticmethod
    def _evidence_row(
        call_id: str,
        evidence: ConsentEvidence,
        prompt_digests: Mapping[str, str] | None,
        pbx_call_id: str | None,
        pbx_channel_id: str | None,
    ) -> dict[str, Any]:
        digests = dict(prompt_digests or {})
        data = evidence.as_dict()
        prompts = [{**p, "sha256": digests.get(p["prompt_id"])} for p in data["prompts"]]
        return {
            "id": evidence.consent_id,
            "call_id": call_id,
            "kind": "decision",
            "status": evidence.decision.value,
            "method": evidence.method,
            "legal_basis": evidence.legal_basis,
            "prompt_id": evidence.question_prompt,
            "prompt_sha256": digests.get(evidence.question_prompt or ""),
            "language": evidence.language,
            "digits": data["digits"],
            "prompts": prompts,
            "attempts": evidence.attempts,
            "policy": data["policy"],
            "pbx_call_id": pbx_call_id,
            "pbx_channel_id": pbx_channel_id,
            "decided_at": evidence.decided_at,
        }

    def log_status_change(
        self,
        call_id: str,
        status: ConsentStatus,
        cause: str,
        at: datetime,
        actor: str | None = None,
    ) -> str:
        change_id = str(uuid.uuid4())
        with self.db.write() as s:
            call = _get(s, Call, call_id)
            decision = s.execute(
                select(ConsentRecord).where(
                    ConsentRecord.call_id == call_id, ConsentRecord.kind == "decision"
                )
            ).scalar_one_or_none()
            if decision is None:
                raise LedgerError(f"call {call_id} has no consent decision to change")
            s.add(
                record := ConsentRecord(
                    id=change_id,
                    call_id=call_id,
                    kind="change",
                    status=status.value,
                    method=cause,
                    actor=actor,
                    legal_basis=decision.legal_basis,
                    policy=decision.policy,
                    decided_at=at,
                )
            )
            call.consent_status = status.value
            s.flush()
            audit.append(
                s,
                self.ctx,
                actor=actor or SYSTEM_ACTOR,
                action="consent.change",
                subject_type="call",
                subject_id=call_id,
                details=audit.sealed(
                    {"status": status.value, "cause": cause, "change_id": change_id}, record
                ),
            )
        return change_id

    # -- recordings ----------------------------------------------------------------------------

    def recording_started(self, call_id: str, recording_id: str, **kw: Any) -> None:
        """Register a recording the PBX was asked to start (before it writes a byte), so a
        file that appears in the spool is always accounted for. Keywords: see
        :meth:`_recording_job`."""
        self.writer.run(self._recording_job(call_id, recording_id, **kw))

    async def recording_started_async(self, call_id: str, recording_id: str, **kw: Any) -> None:
        """:meth:`recording_started` for the event loop: returns once it is committed."""
        await self._run(self._recording_job(call_id, recording_id, **kw))

    def _recording_job(
        self,
        call_id: str,
        recording_id: str,
        *,
        spool_path: str,
        fmt: str = "wav",
        channels: int = 1,
        sample_rate: int | None = None,
        pbx_ref: str | None = None,
        pbx_channel: str | None = None,
        retention_category: str = "default",
        actor: str | None = None,
    ) -> Job[None]:
        row = {
            "id": recording_id,
            "call_id": call_id,
            "state": RecordingState.RECORDING.value,
            "spool_path": spool_path,
            "format": fmt,
            "channels": channels,
            "sample_rate": sample_rate,
            "pbx_ref": pbx_ref,
            "pbx_channel": pbx_channel,
            "retention_category": retention_category,
            "started_at": self._clock(),
        }
        return functools.partial(jobs.recording_started, row=row, actor=actor)

    def set_pbx_ref(self, recording_id: str, pbx_ref: str) -> None:
        """Keep the PBX's handle (MixMonitorID) once the PBX has told us."""
        self.writer.run(
            functools.partial(jobs.set_pbx_ref, recording_id=recording_id, pbx_ref=pbx_ref)
        )

    async def set_pbx_ref_async(self, recording_id: str, pbx_ref: str) -> None:
        job = functools.partial(jobs.set_pbx_ref, recording_id=recording_id, pbx_ref=pbx_ref)
        await self._run(job, lazy=True)

    def recording_closed(self, recording_id: str) -> bool:
        """The PBX closed the file (its header is final). Returns False if it was already
        closed or discarded (PBXs report a close more than once)."""
        job = functools.partial(jobs.recording_closed, recording_id=recording_id, now=self._clock())
        if not self.writer.run(job):
            return False
        if self.sink is not None:
            self.sink.recording_closed(recording_id)
        return True

    async def recording_closed_async(self, recording_id: str) -> bool:
        job = functools.partial(jobs.recording_closed, recording_id=recording_id, now=self._clock())
        if not await self._run(job, patient=True):  # the PBX closed it: nobody hears it
            return False
        if self.sink is not None:
            await self._tell_sink(self.sink.recording_closed, recording_id)
        return True

    def discard(self, recording_id: str, reason: str, actor: str | None = None) -> bool:
        """Mark a recording as never to be kept; the sink destroys its audio. Returns False if
        it was already discarded or purged."""
        if not self.writer.run(self._discard_job(recording_id, reason, actor)):
            return False
        if self.sink is not None:
            self.sink.recording_discarded(recording_id)
        return True

    async def discard_async(self, recording_id: str, reason: str, actor: str | None = None) -> bool:
        if not await self._run(self._discard_job(recording_id, reason, actor)):
            return False
        if self.sink is not None:
            await self._tell_sink(self.sink.recording_discarded, recording_id)
        return True

    async def _tell_sink(self, tell: Callable[[str], None], recording_id: str) -> None:
        """The finalizer's queue: at once if it only queues (``hands_off``: its worker threads
        run), else in a worker thread (without them it works in the caller's thread)."""
        if getattr(self.sink, "hands_off", False):
            tell(recording_id)
        else:
            await asyncio.to_thread(tell, recording_id)

    def _discard_job(self, recording_id: str, reason: str, actor: str | None) -> Job[bool]:
        return functools.partial(
            jobs.discard, recording_id=recording_id, reason=reason, actor=actor, now=self._clock()
        )

    def recording_paused(self, recording_id: str, paused: bool, actor: str | None = None) -> None:
        """The PBX paused (muted) or resumed the recording just now: an audit row
        (``recording.paused`` / ``recording.resumed``) the player marks the stretch from."""
        self.writer.run(self._paused_job(recording_id, paused, actor))

    async def recording_paused_async(
        self, recording_id: str, paused: bool, actor: str | None = None
    ) -> None:
        await self._run(self._paused_job(recording_id, paused, actor))

    def _paused_job(self, recording_id: str, paused: bool, actor: str | None) -> Job[None]:
        return functools.partial(
            jobs.recording_paused,
            recording_id=recording_id,
            paused=paused,
            actor=actor,
            now=self._clock(),
        )

    def call_state(self, pbx: str, pbx_call_id: str) -> CallState | None:
        """The decided call with this PBX id on this node, or None (unknown or undecided)."""
        with self.db.read() as s:
            call = s.execute(self._by_pbx_id(pbx, pbx_call_id)).scalar_one_or_none()
            if call is None:
                return None
            decision = s.execute(
                select(ConsentRecord).where(
                    ConsentRecord.call_id == call.id, ConsentRecord.kind == "decision"
                )
            ).scalar_one_or_none()
            if decision is None:
                return None
            recordings = {
                r.id: (r.state, r.pbx_ref)
                for r in s.execute(
                    select(Recording)
                    .where(Recording.call_id == call.id)
                    .order_by(Recording.started_at)
                ).scalars()
            }
            return CallState(
                _ref(call), decision.id, decision.language, call.ended_at is not None, recordings
            )

    def customer_channels(self, call_id: str) -> set[str]:
        """The PBX channels a call's decision was taken and its recordings run on."""
        with self.db.read() as s:
            decided = s.scalars(
                select(ConsentRecord.pbx_channel_id).where(
                    ConsentRecord.call_id == call_id, ConsentRecord.pbx_channel_id.is_not(None)
                )
            )
            recorded = s.scalars(
                select(Recording.pbx_channel).where(
                    Recording.call_id == call_id, Recording.pbx_channel.is_not(None)
                )
            )
            return {ch for ch in [*decided, *recorded] if ch}

    def recordings_of_call(self, call_id: str) -> list[Recording]:
        with self.db.read() as s:
            return list(
                s.execute(
                    select(Recording)
                    .where(Recording.call_id == call_id)
                    .order_by(Recording.started_at)
                ).scalars()
            )


@dataclass(frozen=True, slots=True)
class CallState:
    """What the store knows of a decided call, enough to rebuild its consent machine."""

    ref: CallRef
    consent_id: str
    language: str | None
    ended: bool
    recordings: dict[str, tuple[str, str | None]]  # id -> (state, pbx_ref)


def _get(session: object, model: type[_T], key: str) -> _T:
    obj = session.get(model, key)  # type: ignore[attr-defined]
    if obj is None:
        raise LedgerError(f"no {model.__tablename__[:-1]} with id {key}")  # type: ignore[attr-defined]
    return obj


def _ref(call: Call) -> CallRef:
    return CallRef(
        call.id, call.pbx, call.pbx_call_id, call.campaign, call.direction, call.consent_status
    )
