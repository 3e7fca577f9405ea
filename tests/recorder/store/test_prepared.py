"""Statements on the DB-API cursor (recorder.store.prepared) store, return and fail exactly as
``Connection.execute`` does, on SQLite and PostgreSQL; the writer settles an event loop's
futures after the commit, and skips a job whose waiter gave up before it ran."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from recorder.store.db import Database
from recorder.store.ledger import Ledger
from recorder.store.models import Call, ConsentRecord, Recording
from recorder.store.prepared import Prepared
from recorder.store.writer import Batch

CALLS, EVIDENCE, RECORDINGS = Call.__table__, ConsentRecord.__table__, Recording.__table__
# microseconds and an offset other than UTC: the stored form is the type's, not Python's
AT = datetime(2026, 12, 4, 17, 5, 6, 123456, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))


def _call(call_id: str) -> dict[str, Any]:
    return {
        "id": call_id, "pbx": "asterisk", "node": "pbx-test", "pbx_call_id": call_id[:8],
        "campaign": "sales", "direction": "inbound", "agent": None, "number_kind": "e164",
        "number_key": "ab" * 32, "number_enc": b"\x00\xffenc", "started_at": AT,
    }  # fmt: skip


def _evidence(row_id: str, call_id: str) -> dict[str, Any]:
    return {  # digits, prompts and attempts left out: their Python defaults are stored
        "id": row_id, "call_id": call_id, "kind": "decision", "status": "granted",
        "method": "prompt", "legal_basis": "consent", "prompt_id": "consent",
        "prompt_sha256": None, "language": "de",
        "policy": {"campaign": "sales", "ä": [1, 2.5, True, None]},
        "pbx_call_id": "1.1", "pbx_channel_id": None, "decided_at": AT,
    }  # fmt: skip


def _recording(row_id: str, call_id: str) -> dict[str, Any]:
    return {  # channels, retention_category, legal_hold left out: defaults
        "id": row_id, "call_id": call_id, "state": "recording",
        "spool_path": "/spool/same.wav", "format": "wav", "sample_rate": 8000,
        "pbx_ref": None, "pbx_channel": "PJSIP/1-0001", "started_at": AT,
    }  # fmt: skip


def _stored(db: Database, table: sa.Table, row_id: str) -> tuple[Any, ...]:
    """The row as the database holds it (no type processing), without its id."""
    names = [c.name for c in table.columns if c.name != "id"]
    sql = f"SELECT {', '.join(names)} FROM {table.name} WHERE id = :id"
    with db.engine.connect() as conn:
        return tuple(conn.execute(sa.text(sql), {"id": row_id}).one())


def test_rows_are_stored_as_connection_execute_stores_them(ledger: Ledger, db: Database):
    ids = {name: (str(uuid.uuid4()), str(uuid.uuid4())) for name in ("call", "ev", "rec")}
    with db.engine.begin() as conn:  # the SQLAlchemy way
        conn.execute(sa.insert(CALLS), _call(ids["call"][0]))
        conn.execute(sa.insert(EVIDENCE), _evidence(ids["ev"][0], ids["call"][0]))
        conn.execute(sa.insert(RECORDINGS), _recording(ids["rec"][0], ids["call"][0]))

    def prepared(b: Batch) -> None:  # the same rows through the cursor
        Prepared(sa.insert(CALLS)).run(b, _call(ids["call"][1]))
        Prepared(sa.insert(EVIDENCE)).many(b, [_evidence(ids["ev"][1], ids["call"][1])])
        Prepared(sa.insert(RECORDINGS)).run(b, _recording(ids["rec"][1], ids["call"][1]))

    ledger.writer.run(prepared)
    for table, name in ((CALLS, "call"), (EVIDENCE, "ev"), (RECORDINGS, "rec")):
        by_core, by_cursor = (_stored(db, table, row_id) for row_id in ids[name])
        swap = {ids["call"][0]: ids["call"][1], ids["call"][0][:8]: ids["call"][1][:8]}
        by_core = tuple(swap.get(v, v) if isinstance(v, str) else v for v in by_core)
        assert by_cursor == by_core, table.name


def test_a_returned_row_is_the_one_sqlalchemy_returns(ledger: Ledger, db: Database):
    call_id, a, b_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with db.engine.begin() as conn:
        conn.execute(sa.insert(CALLS), _call(call_id))
        conn.execute(sa.insert(RECORDINGS), [_recording(a, call_id), _recording(b_id, call_id)])
    closed = (
        sa.update(RECORDINGS)
        .where(RECORDINGS.c.id == sa.bindparam("b_id"), RECORDINGS.c.state == "recording")
        .values(state="closed", closed_at=sa.bindparam("b_now"))
        .returning(*RECORDINGS.columns)
    )
    with db.engine.begin() as conn:
        expected = dict(conn.execute(closed, {"b_id": a, "b_now": AT}).one()._mapping)
    got = ledger.writer.run(lambda b: Prepared(closed).first(b, {"b_id": b_id, "b_now": AT}))
    assert got == {**expected, "id": b_id}
    assert got["closed_at"] == AT and got["closed_at"].tzinfo is UTC  # aware, in UTC
    assert (
        ledger.writer.run(lambda b: Prepared(closed).first(b, {"b_id": b_id, "b_now": AT})) is None
    )


def test_a_database_error_is_sqlalchemys_and_fails_its_job_alone(ledger: Ledger, db: Database):
    call_id = str(uuid.uuid4())
    ledger.writer.run(lambda b: Prepared(sa.insert(CALLS)).run(b, _call(call_id)))
    with pytest.raises(IntegrityError):  # what the ledger's open_call race handling catches
        ledger.writer.run(lambda b: Prepared(sa.insert(CALLS)).run(b, _call(call_id)))
    by_id = Prepared(sa.select(CALLS).where(CALLS.c.id == sa.bindparam("b_id")))
    with pytest.raises(KeyError, match="b_id"):
        ledger.writer.run(lambda b: by_id.first(b, {}))
    assert ledger.find_call("asterisk", call_id[:8]) is not None  # the writer goes on


def test_event_loop_futures_resolve_after_the_commit_and_a_given_up_job_is_not_run(
    ledger: Ledger, db: Database
):
    held, ran = threading.Event(), []

    def slow(b: Batch) -> str:
        held.wait(10)
        return "slow"

    def job(i: int):
        def write(b: Batch) -> int:
            ran.append(i)
            if i == 3:
                raise ValueError("job 3 fails")
            b.audit(actor="t", action="test.row", subject_type="call", details={"i": i})
            return i

        return write

    async def main() -> list[Any]:
        first = ledger.writer.submit_async(slow)  # the writer is busy with it
        await asyncio.sleep(0.05)
        futures = [ledger.writer.submit_async(job(i)) for i in range(6)]
        futures[4].cancel()  # its caller gave up while it was queued
        held.set()
        return [await first, *await asyncio.gather(*futures, return_exceptions=True)]

    results = asyncio.run(main())
    assert results[:4] == ["slow", 0, 1, 2]
    assert isinstance(results[4], ValueError) and isinstance(results[5], asyncio.CancelledError)
    assert results[6] == 5
    assert sorted(set(ran)) == [0, 1, 2, 3, 5]  # 4 never ran (3 failed alone, the rest again)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT details FROM audit_log ORDER BY seq")).scalars().all()
    assert rows == [f'{{"i":{i}}}' for i in (0, 1, 2, 5)]


def test_a_failed_batch_leaves_nothing_and_the_next_one_commits(ledger: Ledger, db: Database):
    """The writer's transaction is the DB-API connection's: a job that wrote and then failed
    leaves neither its row nor its audit row, and the next batch starts a transaction afresh
    (SQLite: the write lock was released) and commits."""
    kept, lost = str(uuid.uuid4()), str(uuid.uuid4())

    def half(b: Batch) -> None:
        Prepared(sa.insert(CALLS)).run(b, _call(lost))
        b.audit(actor="t", action="test.row", subject_type="call", subject_id=lost)
        raise RuntimeError("failed after writing")

    with pytest.raises(RuntimeError, match="failed after writing"):
        ledger.writer.run(half)
    ledger.writer.run(lambda b: Prepared(sa.insert(CALLS)).run(b, _call(kept)))
    other = Database(db.url)  # what another connection sees: committed rows only
    try:
        with other.engine.connect() as conn:
            ids = conn.execute(sa.select(CALLS.c.id)).scalars().all()
            audited = conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar()
    finally:
        other.dispose()
    assert (ids, audited) == ([kept], 0)


def test_a_light_read_gives_the_row_connection_execute_gives(ledger: Ledger, db: Database):
    # the finalizer's per-recording looks (Database.reading): a join with a label, every
    # value as the column types give it (aware datetimes, JSON, bytes), or None
    call_id, rec_id = str(uuid.uuid4()), str(uuid.uuid4())
    with db.engine.begin() as conn:
        conn.execute(sa.insert(CALLS), {**_call(call_id), "ended_at": AT})
        conn.execute(sa.insert(RECORDINGS), {**_recording(rec_id, call_id), "closed_at": AT})
    look = (
        sa.select(RECORDINGS, CALLS.c.ended_at.label("call_ended_at"), CALLS.c.number_enc)
        .outerjoin(CALLS, CALLS.c.id == RECORDINGS.c.call_id)
        .where(RECORDINGS.c.id == sa.bindparam("b_id"))
    )
    with db.engine.connect() as conn:
        by_core = conn.execute(look, {"b_id": rec_id}).one()._asdict()
    with db.reading() as r:
        row = r.first(Prepared(look), {"b_id": rec_id})
        missing = r.first(Prepared(look), {"b_id": "no-such-recording"})
        raw = r.conn.connection.dbapi_connection
        assert raw is not None
        if db.dialect != "sqlite":  # psycopg opened one at the first statement
            assert raw.info.transaction_status != raw.info.transaction_status.IDLE
    assert row is not None and missing is None
    assert vars(row) == by_core
    assert row.call_ended_at == AT and row.call_ended_at.utcoffset() == timedelta(0)
    assert row.closed_at == AT and row.state == "recording" and row.channels == 1
    assert row.number_enc == b"\x00\xffenc"
    # and the read ended with it: its connection is back in the pool outside any transaction
    if db.dialect == "sqlite":
        assert not raw.in_transaction
    else:
        assert raw.info.transaction_status == raw.info.transaction_status.IDLE


def test_a_light_read_counts_as_one_read_transaction(tmp_path, monkeypatch):
    # the benchmark's reads per call (CALLCONSENT_STORE_STATS) stay comparable: a light read
    # is one read, as the Connection it replaces was (its rollback counted)
    from recorder import metrics
    from recorder.store.db import sqlite_url
    from recorder.store.migrate import upgrade

    def reads() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "callconsent_store_transactions_total", {"end": "rollback"}
        )
        return value or 0.0

    monkeypatch.setenv("CALLCONSENT_STORE_STATS", "1")
    db = Database(sqlite_url(tmp_path / "stats.db"))
    upgrade(db)
    before = reads()
    with db.engine.connect() as conn:  # the way it was
        conn.execute(sa.select(RECORDINGS.c.state)).first()
    assert reads() == before + 1
    with db.reading() as r:
        assert r.first(Prepared(sa.select(RECORDINGS.c.state)), {}) is None
        r.first(Prepared(sa.select(CALLS.c.id)), {})
    assert reads() == before + 2
    db.engine.dispose()


def test_a_light_reads_own_error_is_the_one_raised(db: Database):
    # closing the cursor of a connection that is gone fails too: that must not hide why
    class GoneCursor:
        def close(self) -> None:
            raise RuntimeError("the connection is closed")

    with pytest.raises(IntegrityError), db.reading() as r:
        r.cursor.close()
        r.cursor = GoneCursor()
        raise IntegrityError("SELECT 1", {}, Exception("the read's own error"))
