"""Group commit (recorder.store.writer): many calls' changes in one transaction, the audit
chain in queue order, a failing change failing alone, and every change committed (visible
to another connection) by the time its caller hears it is done."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import pytest
from sqlalchemy import func, select

from consent_ivr.evidence import ConsentEvidence
from recorder.store import audit
from recorder.store.db import Database
from recorder.store.ledger import Ledger, LedgerError
from recorder.store.models import AuditEntry, Call, ConsentRecord, Recording
from recorder.store.writer import Batch


def _evidence() -> ConsentEvidence:
    from datetime import UTC, datetime

    from consent_ivr.status import ConsentStatus

    return ConsentEvidence(
        consent_id=str(uuid.uuid4()),
        decision=ConsentStatus.GRANTED,
        method="prompt",
        legal_basis="consent",
        mode="ivr",
        language="en",
        question_prompt="consent",
        digits=(),
        prompts=(),
        attempts=1,
        policy={"campaign": "sales"},
        decided_at=datetime.now(UTC),
    )


def test_concurrent_calls_share_transactions_and_keep_one_chain(ledger: Ledger, db: Database):
    calls = 60
    gate = threading.Barrier(calls)

    def one(i: int) -> None:
        gate.wait()
        ref = ledger.open_call(pbx="asterisk", pbx_call_id=f"k{i}", campaign="sales")
        ledger.recording_started(ref.id, str(uuid.uuid4()), spool_path=f"/s/{i}.wav")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Recording)) == calls
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 2 * calls
        report = audit.verify(s)
    assert report.ok, report.problems
    # 120 changes arrived together: fewer commits than changes (one fsync for many calls)
    assert ledger.writer.batches < 2 * calls


def test_a_failing_change_fails_alone(ledger: Ledger, db: Database):
    ref = ledger.open_call(pbx="asterisk", pbx_call_id="ok", campaign="sales")
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())

    async def both() -> list[object]:
        return await asyncio.gather(
            ledger.recording_started_async(ref.id, good, spool_path="/s/good.wav"),
            ledger.recording_started_async("no-such-call", bad, spool_path="/s/bad.wav"),
            ledger.set_pbx_ref_async(good, "0x1"),
            return_exceptions=True,
        )

    started, failed, ref_set = asyncio.run(both())
    assert started is None and ref_set is None
    assert isinstance(failed, LedgerError) and "no call with id no-such-call" in str(failed)
    with db.read() as s:
        assert s.get(Recording, good).pbx_ref == "0x1"
        assert s.get(Recording, bad) is None
        assert audit.verify(s).ok


def test_evidence_is_committed_when_the_caller_hears_it_is_stored(ledger: Ledger, db: Database):
    """What the recording may start on: another connection (another process) sees it."""
    other = Database(db.url)
    try:

        async def decide() -> tuple[int, int]:
            ref = await ledger.open_call_async(pbx="asterisk", pbx_call_id="d", campaign="s")
            await ledger.log_consent_async(ref.id, _evidence())
            with other.read() as s:
                decided = s.scalar(select(func.count()).select_from(ConsentRecord))
                status = s.scalar(select(Call.consent_status).where(Call.id == ref.id))
            return decided, status

        assert asyncio.run(decide()) == (1, "granted")
    finally:
        other.dispose()


def test_jobs_see_the_tail_their_batch_left(ledger: Ledger, db: Database):
    """Audit rows of one batch chain on each other, in the order the jobs were queued."""
    order: list[int] = []

    def job(i: int):
        def write(b: Batch) -> None:
            b.audit(actor="t", action="test.row", subject_type="call", details={"i": i})
            order.append(i)

        return write

    futures = [ledger.writer.submit(job(i)) for i in range(20)]
    for f in futures:
        f.result(timeout=30)
    with db.read() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        assert audit.verify(s).ok
    assert [int(r.details.split(":")[1].rstrip("}")) for r in rows] == list(range(20))
    assert order == list(range(20))


def test_the_writer_thread_ends_when_idle_and_comes_back(ledger: Ledger, monkeypatch):
    from recorder.store import writer

    monkeypatch.setattr(writer, "IDLE_EXIT_S", 0.05)
    ledger.open_call(pbx="asterisk", pbx_call_id="a", campaign="s")
    deadline = threading.Event()
    for _ in range(100):
        if ledger.writer._thread is None:
            break
        deadline.wait(0.02)
    assert ledger.writer._thread is None
    assert ledger.open_call(pbx="asterisk", pbx_call_id="b", campaign="s").pbx_call_id == "b"


def _audit_job(i: int):
    def write(b: Batch) -> int:
        b.audit(actor="t", action="test.row", subject_type="call", details={"i": i})
        return i

    return write


def test_a_lazy_change_waits_for_an_urgent_one_and_shares_its_commit(ledger: Ledger, db: Database):
    """A call's end (lazy) queued while the writer is idle is not committed on its own when a
    decision (urgent) follows within the linger: one transaction for both, in queue order."""
    ledger.writer.run(_audit_job(0))  # the writer thread is up and idle
    before = ledger.writer.batches
    lazy = ledger.writer.submit(_audit_job(1), lazy=True)
    threading.Event().wait(0.003)  # the writer has woken and lingers
    urgent = ledger.writer.submit(_audit_job(2))
    assert (lazy.result(timeout=30), urgent.result(timeout=30)) == (1, 2)
    assert ledger.writer.batches == before + 1
    with db.read() as s:
        assert audit.verify(s).ok


def test_a_lazy_change_alone_is_committed_after_the_linger(ledger: Ledger, db: Database):
    from recorder.store import writer

    ledger.writer.run(_audit_job(0))
    lazy = ledger.writer.submit(_audit_job(1), lazy=True)
    assert lazy.result(timeout=10 * writer.LINGER_S + 5) == 1
    other = Database(db.url)  # visible to another connection: committed
    try:
        with other.read() as s:
            assert s.scalar(select(func.count()).select_from(AuditEntry)) == 2
    finally:
        other.dispose()


def test_a_patient_change_waits_for_an_urgent_one_while_company_comes(
    ledger: Ledger, db: Database, monkeypatch
):
    """A call's end (patient: nobody hears it) queued while calls are in progress, with jobs
    still coming (each within LINGER_S of the one before), shares the next decision's
    commit, past the wait of a lazy change queued with it."""
    from recorder.store import writer

    monkeypatch.setattr(writer, "PATIENT_S", 30.0)
    monkeypatch.setattr(writer, "LINGER_S", 0.2)
    ledger.writer.run(_audit_job(0))  # the writer is up, and a call is in progress
    before = ledger.writer.batches
    patient = ledger.writer.submit(_audit_job(1), patient=True)
    for _ in range(3):  # more company, 0.1 s apart: 0.3 s, past a lazy change's 0.2 s
        threading.Event().wait(0.1)
        ledger.writer.submit(_audit_job(9), patient=True)
    urgent = ledger.writer.submit(_audit_job(2))
    assert (patient.result(timeout=30), urgent.result(timeout=30)) == (1, 2)
    assert ledger.writer.batches == before + 1
    with db.read() as s:
        assert audit.verify(s).ok


def test_a_lazy_change_is_not_held_to_the_wait_of_a_patient_one(ledger: Ledger, monkeypatch):
    """A call's opening (lazy: its prompt waits) queued behind a call's end (patient) is
    committed after LINGER_S, the end with it, not after PATIENT_S."""
    from recorder.store import writer

    monkeypatch.setattr(writer, "PATIENT_S", 30.0)
    ledger.writer.run(_audit_job(0))
    patient = ledger.writer.submit(_audit_job(1), patient=True)
    threading.Event().wait(0.005)  # the writer lingers for the patient one
    lazy = ledger.writer.submit(_audit_job(2), lazy=True)
    assert lazy.result(timeout=10) == 2  # long before the patient one's 30 s
    assert patient.result(timeout=0) == 1


def test_patient_changes_wait_for_company_even_with_no_call_in_progress(
    ledger: Ledger, monkeypatch
):
    """The last calls' hangups (patient) share commits with each other; a lazy change with
    no call in progress is committed at once, and takes the waiting ones with it."""
    from recorder.store import writer

    monkeypatch.setattr(writer, "PATIENT_S", 30.0)
    monkeypatch.setattr(writer, "LINGER_S", 5.0)  # the ends' wait for company outlasts the test
    monkeypatch.setattr(writer, "URGENT_RECENT_S", 0.0)  # no call is ever in progress
    ledger.writer.run(_audit_job(0))
    before = ledger.writer.batches
    ends = [ledger.writer.submit(_audit_job(i), patient=True) for i in (1, 2)]
    threading.Event().wait(0.02)
    encrypted = ledger.writer.submit(_audit_job(3), lazy=True)
    assert encrypted.result(timeout=10) == 3  # at once, not after the patient ones' 30 s
    assert [f.result(timeout=0) for f in ends] == [1, 2]
    assert ledger.writer.batches == before + 1


def test_patient_changes_with_no_call_in_progress_wait_only_while_company_comes(
    ledger: Ledger, monkeypatch
):
    """With no call in progress, patient changes (the last calls' hangups, a burst of closes
    after a PBX restart) share one commit while more keep coming, each within LINGER_S of the
    one before, and are committed once none has come for LINGER_S: not PATIENT_S later."""
    from recorder.store import writer

    monkeypatch.setattr(writer, "PATIENT_S", 30.0)
    monkeypatch.setattr(writer, "LINGER_S", 0.5)
    monkeypatch.setattr(writer, "URGENT_RECENT_S", 0.0)  # no call is ever in progress
    ledger.writer.run(_audit_job(0))
    before = ledger.writer.batches
    ends = []
    for i in range(1, 5):  # 0.1 s apart, 0.3 s from the first to the last
        ends.append(ledger.writer.submit(_audit_job(i), patient=True))
        threading.Event().wait(0.1)
    assert [f.result(timeout=10) for f in ends] == [1, 2, 3, 4]  # long before 30 s
    assert ledger.writer.batches == before + 1


def _hold_the_store_lock(db: Database, seconds: float) -> threading.Thread:
    """Another connection (as another process would) holds the store's write lock: SQLite's
    (BEGIN IMMEDIATE), PostgreSQL's audit tail row (FOR UPDATE); returns once it holds it."""
    held = threading.Event()

    def hold() -> None:
        other = Database(db.url)
        try:
            conn = other.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
            with conn, conn.begin():
                conn.exec_driver_sql(
                    "SELECT seq FROM audit_head WHERE id = 1"
                    + (" FOR UPDATE" if other.dialect == "postgresql" else "")
                )
                held.set()
                threading.Event().wait(seconds)
        finally:
            other.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(30)
    return thread


def test_a_batch_that_waited_for_the_stores_lock_says_so_in_one_line(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
):
    """A caller's key press waited for another connection's lock: the log says how long, and
    in which phase (not the disk's commit, not this process's own lock)."""
    with caplog.at_level(logging.WARNING, logger="callconsent.store"):
        ledger.writer.run(_audit_job(0))  # a quick batch (and the tail row exists)
        assert not [r for r in caplog.records if r.getMessage() == "store_commit_slow"]
        holder = _hold_the_store_lock(ledger.db, 0.15)  # just past the steady goal's 100 ms
        assert ledger.writer.run(_audit_job(1)) == 1
        holder.join()
    (line,) = [r for r in caplog.records if r.getMessage() == "store_commit_slow"]
    assert line.kv["begin_ms"] >= 100 and line.kv["ms"] >= line.kv["begin_ms"], line.kv
    assert line.kv["lock_ms"] < 100 and line.kv["commit_ms"] < 100, line.kv
    assert (line.kv["jobs"], line.kv["more"]) == (1, 0)


def test_slow_batches_are_said_at_most_once_per_interval_with_a_count(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from recorder.store import writer

    monkeypatch.setattr(writer, "SLOW_S", 0.0)  # every batch is slow
    monkeypatch.setattr(writer, "SLOW_EVERY_S", 3600.0)
    with caplog.at_level(logging.WARNING, logger="callconsent.store"):
        for i in range(3):
            ledger.writer.run(_audit_job(i))
        said = [r.kv for r in caplog.records if r.getMessage() == "store_commit_slow"]
        assert len(said) == 1 and said[0]["more"] == 0
        monkeypatch.setattr(writer, "SLOW_EVERY_S", 0.0)
        ledger.writer.run(_audit_job(3))
    said = [r.kv for r in caplog.records if r.getMessage() == "store_commit_slow"]
    assert [s["more"] for s in said] == [0, 2]  # the two unsaid are counted in the next
