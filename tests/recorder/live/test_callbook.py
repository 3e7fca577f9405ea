"""The shared call driver, against a scripted fake PBX: the store is kept in step, in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from fake_pbx import FakePbx, make_prompts

import consent_ivr as c
from recorder.live.callbook import CallBook
from recorder.live.port import RecordingFile
from recorder.store import calljobs
from recorder.store.ledger import Ledger, LedgerError
from recorder.store.models import AuditEntry, ConsentRecord, Recording


@pytest.fixture
def book(ledger: Ledger, tmp_path: Path) -> CallBook:
    policies = c.PolicyBook.from_mapping({"sales": {"monitoring_allowed": True}})
    return CallBook(ledger, lambda: policies, make_prompts(tmp_path / "prompts"))


def test_accept_stores_the_decision_before_the_pbx_records(book: CallBook, ledger: Ledger) -> None:
    async def scenario() -> None:
        pbx = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(
            pbx="asterisk",
            pbx_call_id="1.74",
            campaign="sales",
            number="+4915112345678",
            channel_language="de_DE",
            pbx_channel_id="1.75",
        )
        assert await live.run_dialogue(pbx) is c.ConsentStatus.GRANTED
        kinds = [entry[0] for entry in pbx.calls]
        # stored, registered, recording; then the variables (issue 14: no export ahead of it)
        assert kinds == ["play", "start", "set", "allow_monitoring", "play", "hand_back"]
        assert pbx.calls[0][2] == "de"
        rid = pbx.calls[1][1]
        with ledger.db.read() as s:
            actions = list(s.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))
            decision = s.scalars(sa.select(ConsentRecord)).one()
            rec = s.get(Recording, rid)
        assert actions == ["call.opened", "consent.decision", "recording.started"]
        assert decision.prompt_sha256 == book.prompts.get("consent", "de").sha256
        assert decision.pbx_channel_id == "1.75" and decision.language == "de"
        assert rec.state == "recording" and rec.pbx_ref == "0x0002"  # the 2nd PBX call
        assert book.find("asterisk", "1.74") is live

    asyncio.run(scenario())


class CountingPbx(FakePbx):
    """Notes, when asked to record, how many store commits there were and what is stored."""

    def __init__(self, script: list[c.Event], ledger: Ledger) -> None:
        super().__init__(script)
        self.ledger = ledger
        self.at_start: tuple[int, list[str]] | None = None

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        with self.ledger.db.read() as s:
            actions = list(s.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))
        self.at_start = (self.ledger.writer.batches, actions)
        return await super().start_recording(recording_id, file)


def test_the_accept_keys_evidence_and_recording_are_one_commit_before_the_pbx_records(
    book: CallBook, ledger: Ledger
) -> None:
    """Issue 14, point 1: each commit between the key and the PBX's record command costs the
    caller's first words; the evidence and the registration go in one transaction."""

    async def scenario() -> None:
        pbx = CountingPbx([c.DigitReceived("1"), c.PromptFinished("thanks")], ledger)
        live = await book.open(pbx="freeswitch", pbx_call_id="u-1", campaign="sales")
        opened = ledger.writer.batches
        assert await live.run_dialogue(pbx) is c.ConsentStatus.GRANTED
        assert pbx.at_start is not None
        commits, stored = pbx.at_start
        assert commits - opened == 1, f"{commits - opened} commits before the PBX records"
        assert stored == ["call.opened", "consent.decision", "recording.started"]

    asyncio.run(scenario())


def test_a_recording_that_cannot_be_registered_keeps_the_evidence_and_is_not_started(
    book: CallBook, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kw: object) -> None:
        raise LedgerError("the recordings table refused the row")

    monkeypatch.setattr(calljobs, "recording_started", refuse)

    async def scenario() -> None:
        pbx = FakePbx([c.DigitReceived("1")])
        live = await book.open(pbx="asterisk", pbx_call_id="5.1", campaign="default")
        with pytest.raises(LedgerError, match="refused the row"):
            await live.run_dialogue(pbx)
        assert "start" not in [e[0] for e in pbx.calls]  # the PBX never heard of it
        with ledger.db.read() as s:
            decision = s.scalars(sa.select(ConsentRecord)).one()  # the decision is kept
            assert s.scalars(sa.select(Recording)).all() == []
        assert decision.status == "granted"

    asyncio.run(scenario())


def test_agent_commands_in_another_session_reach_the_same_call(
    book: CallBook, ledger: Ledger
) -> None:
    async def scenario() -> None:
        dialogue = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(pbx="freeswitch", pbx_call_id="uuid-1", campaign="default")
        await live.run_dialogue(dialogue)
        rid = next(e[1] for e in dialogue.calls if e[0] == "start")
        control = FakePbx([])
        live.control = control
        found = book.find("freeswitch", "uuid-1")
        assert found is live
        await found.agent("pause", "7001")
        await found.agent("pause", "7001")  # refused: already paused
        await found.agent("discard", "7001")
        assert [e[0] for e in control.calls] == ["pause", "reject", "set", "stop"]
        with ledger.db.read() as s:
            assert s.get(Recording, rid).state == "discarded"
        refused = await found.agent("start", "7001")
        assert isinstance(refused[-1], c.RejectCommand)

    asyncio.run(scenario())


def test_pauses_and_resumes_are_audited_once_the_pbx_has_muted(
    book: CallBook, ledger: Ledger
) -> None:
    """The player marks paused stretches from these rows: one per pause and per resume the
    PBX carried out, naming the agent, at the moment it did; none for a refused command or a
    mute the PBX refused."""

    async def scenario() -> None:
        dialogue = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(pbx="asterisk", pbx_call_id="3.1", campaign="default")
        await live.run_dialogue(dialogue)
        rid = next(e[1] for e in dialogue.calls if e[0] == "start")
        live.control = FakePbx([])
        await live.agent("pause", "7001")
        await live.agent("pause", "7001")  # refused: already paused
        await live.agent("resume", "7002")
        with pytest.raises(RuntimeError, match="refused pause"):
            await live.agent("pause", "7001", FakePbx([], fail_on="pause"))
        with ledger.db.read() as s:
            rows = list(
                s.scalars(
                    sa.select(AuditEntry)
                    .where(AuditEntry.action.in_(["recording.paused", "recording.resumed"]))
                    .order_by(AuditEntry.seq)
                )
            )
        assert [(r.action, r.actor, r.subject_type, r.subject_id) for r in rows] == [
            ("recording.paused", "7001", "recording", rid),
            ("recording.resumed", "7002", "recording", rid),
        ]
        assert json.loads(rows[0].details) == {"call_id": live.ref.id}
        assert rows[0].at <= rows[1].at

    asyncio.run(scenario())


def test_missing_prompt_means_unavailable(book: CallBook, ledger: Ledger) -> None:
    async def scenario() -> None:
        book.prompts.get("consent", "en").path.unlink()
        book.prompts.reload()
        pbx = FakePbx([])
        live = await book.open(pbx="asterisk", pbx_call_id="2.1", campaign="default")
        assert await live.run_dialogue(pbx) is c.ConsentStatus.UNAVAILABLE
        assert [e[0] for e in pbx.calls] == ["set", "hand_back"]

    asyncio.run(scenario())


def test_hangup_while_starting_the_recording_discards_it_and_sets_nothing(
    book: CallBook, ledger: Ledger
) -> None:
    async def scenario() -> None:
        pbx = FakePbx([c.DigitReceived("1")], gone_on="start")
        live = await book.open(pbx="asterisk", pbx_call_id="3.1", campaign="default")
        assert await live.run_dialogue(pbx) is c.ConsentStatus.GRANTED
        assert [e[0] for e in pbx.calls] == ["play", "start"]  # no PBX action after the loss
        assert live.machine.phase is c.Phase.ENDED
        with ledger.db.read() as s:
            (rec,) = s.scalars(sa.select(Recording)).all()
            assert rec.state == "discarded"

    asyncio.run(scenario())


def test_a_decided_call_is_rebuilt_from_the_store_after_a_restart(
    book: CallBook, ledger: Ledger
) -> None:
    async def scenario() -> None:
        pbx = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(pbx="asterisk", pbx_call_id="7.1", campaign="sales")
        await live.run_dialogue(pbx)
        rid = next(e[1] for e in pbx.calls if e[0] == "start")
        ref = live.pbx_refs[rid]
        restarted = CallBook(ledger, book.policies, book.prompts)  # a new daemon, empty memory
        assert restarted.find("asterisk", "7.1") is None
        again = await restarted.lookup("asterisk", "7.1")
        assert again is not None and again.status is c.ConsentStatus.GRANTED
        again.control = control = FakePbx([])
        await again.agent("stop", "7001")
        assert control.calls == [("stop", rid, ref)]
        assert await restarted.lookup("asterisk", "unknown") is None

    asyncio.run(scenario())


def test_a_discard_survives_a_stop_that_finds_the_channel_gone(
    book: CallBook, ledger: Ledger
) -> None:
    async def scenario() -> None:
        dialogue = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(pbx="freeswitch", pbx_call_id="uuid-9", campaign="default")
        await live.run_dialogue(dialogue)
        rid = next(e[1] for e in dialogue.calls if e[0] == "start")
        live.control = FakePbx([], gone_on="stop")  # the customer hung up a moment ago
        done = await live.agent("discard", "7001")
        assert any(isinstance(a, c.DiscardRecording) for a in done)
        assert live.machine.phase is c.Phase.ENDED
        with ledger.db.read() as s:
            assert s.get(Recording, rid).state == "discarded"

    asyncio.run(scenario())


def test_a_discard_is_stored_even_when_the_pbx_fails_the_stop(
    book: CallBook, ledger: Ledger
) -> None:
    """*49 is stop then discard; a stop the PBX refuses (not a hangup) must not leave the
    recording to be finalized and kept: the discard still reaches the store, the error goes up."""

    async def scenario() -> None:
        dialogue = FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")])
        live = await book.open(pbx="asterisk", pbx_call_id="lid-7", campaign="default")
        await live.run_dialogue(dialogue)
        rid = next(e[1] for e in dialogue.calls if e[0] == "start")
        live.control = FakePbx([], fail_on="stop")
        with pytest.raises(RuntimeError, match="refused stop"):
            await live.agent("discard", "7001")
        with ledger.db.read() as s:
            rec = s.get(Recording, rid)
            assert (rec.state, rec.discard_reason) == ("discarded", "agent_discard")

    asyncio.run(scenario())
