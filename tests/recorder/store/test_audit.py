"""The hash-chained audit log: tamper detection, and one linear chain under concurrent writers."""

from __future__ import annotations

import itertools
import multiprocessing
import threading

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import AuditEntry, AuditHead

CTX = audit.AuditContext(node="pbx-test", os_user="tester")


def write_rows(db: Database, n: int, actor: str = "tester") -> None:
    for i in range(n):
        with db.write() as s:
            audit.append(
                s,
                CTX,
                actor=actor,
                action="test.row",
                subject_type="test",
                subject_id=str(i),
                details={"i": i},
            )


def check(db: Database) -> audit.AuditReport:
    with db.read() as s:
        return audit.verify(s)


def test_intact_chain_verifies(db: Database) -> None:
    write_rows(db, 20)
    report = check(db)
    assert report.ok and report.rows == 20


def test_an_edited_row_is_named(db: Database) -> None:
    write_rows(db, 10)
    with db.write() as s:
        s.execute(sa.update(AuditEntry).where(AuditEntry.seq == 4).values(actor="mallory"))
    report = check(db)
    assert not report.ok
    assert (4, "row 4 was edited (its hash does not match)") in report.problems


def test_a_removed_row_is_named(db: Database) -> None:
    write_rows(db, 10)
    with db.write() as s:
        s.execute(sa.delete(AuditEntry).where(AuditEntry.seq == 6))
    problems = dict(check(db).problems)
    assert "row 6 removed" in problems[6]
    assert "does not follow" in problems[7]


def test_rows_removed_from_the_end_are_noticed(db: Database) -> None:
    write_rows(db, 10)
    with db.write() as s:
        s.execute(sa.delete(AuditEntry).where(AuditEntry.seq >= 9))
    assert check(db).problems == [(9, "rows 9..10 removed from the end of the log")]


def forge(s, seq: int, prev_hash: str) -> None:
    prev = s.get(AuditEntry, 1)
    forged = AuditEntry(
        seq=seq,
        at=prev.at,
        node="x",
        os_user="x",
        actor="x",
        action="forged",
        subject_type="test",
        subject_id=None,
        details="{}",
        prev_hash=prev_hash,
    )
    forged.hash = audit.entry_hash(forged)
    s.add(forged)


def test_an_inserted_row_is_noticed(db: Database) -> None:
    write_rows(db, 5)
    with db.write() as s:
        # make room for row 3 (in two steps: the primary key is checked row by row)
        s.execute(
            sa.update(AuditEntry).where(AuditEntry.seq >= 3).values(seq=AuditEntry.seq + 1000)
        )
        s.execute(
            sa.update(AuditEntry).where(AuditEntry.seq >= 1000).values(seq=AuditEntry.seq - 999)
        )
        forge(s, 3, "f" * 64)  # a self-consistent hash, but it cannot follow row 2
    report = check(db)
    assert not report.ok
    seqs = {seq for seq, _ in report.problems}
    assert 3 in seqs and 4 in seqs  # the forged row, and the real row it pushed aside


def test_a_fork_of_the_chain_cannot_be_committed(db: Database) -> None:
    write_rows(db, 3)
    with pytest.raises(sa.exc.IntegrityError), db.write() as s:
        tail = s.get(AuditEntry, 2)
        forge(s, 99, tail.prev_hash)  # a second row following row 1


@pytest.mark.parametrize(
    "written", ["+4915112345678", "+49 151 12345678", "erasure for +49 (151) 1234-5678"]
)
def test_details_with_a_phone_number_are_refused(db: Database, written: str) -> None:
    with pytest.raises(ValueError, match="phone number"), db.write() as s:
        audit.append(
            s,
            CTX,
            actor="x",
            action="oops",
            subject_type="call",
            details={"reason": written},
        )
    assert check(db).rows == 0


def test_times_and_ids_are_not_taken_for_phone_numbers(db: Database) -> None:
    with db.write() as s:
        audit.append(
            s,
            CTX,
            actor="x",
            action="fine",
            subject_type="call",
            details={"at": "2026-11-24T05:00:00+00:00", "id": "4087-45b2-bf6e", "n": "+1 2"},
        )
    assert check(db).rows == 1


def test_concurrent_writers_keep_one_linear_chain(db: Database) -> None:
    threads = [threading.Thread(target=write_rows, args=(db, 25, f"t{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = check(db)
    assert report.ok, report.problems
    assert report.rows == 150
    with db.read() as s:
        assert s.get(AuditHead, 1).seq == 150


def _process_writer(url: str, n: int, actor: str) -> None:
    database = Database(url)
    try:
        write_rows(database, n, actor)
    finally:
        database.dispose()


def test_concurrent_processes_keep_one_linear_chain(db: Database) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(db.url, 20, f"p{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    report = check(db)
    assert report.ok and report.rows == 80


def test_export_since_gives_a_stretch_that_checks_on_its_own(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    base = datetime(2026, 11, 1, tzinfo=UTC)
    for day in range(5):
        with db.write() as s:
            audit.append(
                s,
                CTX,
                actor="t",
                action="test.row",
                subject_type="test",
                details={"day": day},
                at=base + timedelta(days=day),
            )
    with db.read() as s:
        rows = list(audit.export(s, since=base + timedelta(days=2)))
        everything = list(audit.export(s))
    assert [r["details"]["day"] for r in rows] == [2, 3, 4]
    assert rows[0]["prev_hash"] == everything[1]["hash"]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**62),
    texts=st.lists(st.text(), min_size=7, max_size=7),
    subject_id=st.none() | st.text(),
    at=st.datetimes(timezones=st.just(__import__("datetime").timezone.utc)),
)
def test_entry_hash_is_the_sha256_of_the_documented_canonical_json(seq, texts, subject_id, at):
    import hashlib

    fields = dict(
        zip(
            ("node", "os_user", "actor", "action", "subject_type", "details", "prev_hash"),
            texts,
            strict=True,
        )
    )
    fields |= {"seq": seq, "subject_id": subject_id, "at": at}
    reference = audit.canonical_json({**fields, "at": at.isoformat(timespec="microseconds")})
    assert audit.entry_hash(fields) == hashlib.sha256(reference.encode()).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=12), min_size=1, max_size=12),
    shared=st.booleans(),
    at=st.datetimes(timezones=st.just(__import__("datetime").timezone.utc)),
)
def test_chain_hashes_every_row_as_entry_hash_does(texts, shared, at):
    """chain() encodes what its rows share once (and a details dict once): each hash must
    still be entry_hash of that row, and each row must follow the one before."""
    one = {"reason": "retention", "category": "x"}
    rows = [
        {
            "actor": t or "a",
            "action": "recording.purged" if i % 2 else t,
            "subject_type": "recording",
            "subject_id": None if i % 3 == 0 else t,
            **({"details": one if shared else {"n": i, "text": t}} if i % 4 else {}),
        }
        for i, t in enumerate(texts)
    ]
    ctx = audit.AuditContext(node="pbx-1 ü", os_user='root "x"')
    values = audit.chain((41, "ab" * 32), ctx, rows, at=at)
    assert [v["seq"] for v in values] == list(range(42, 42 + len(rows)))
    prev = "ab" * 32
    for v, r in zip(values, rows, strict=True):
        assert v["prev_hash"] == prev
        assert v["details"] == audit.canonical_json(r.get("details") or {})
        assert v["hash"] == audit.entry_hash(v)
        prev = v["hash"]
