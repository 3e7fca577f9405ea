"""The metadata store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

import consent_ivr as c
from recorder.store import migrate
from recorder.store.db import Database
from recorder.store.ledger import Ledger, LedgerError
from recorder.store.models import AuditEntry, Base, Call, ConsentRecord, Recording

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"


def decided(policy: c.Policy | None = None, digit: str = "1") -> c.ConsentEvidence:
    call = c.ConsentCall(policy or c.Policy())
    call.handle(c.CallAnswered())
    actions = call.handle(c.DigitReceived(digit))
    return next(a for a in actions if isinstance(a, c.LogConsent)).evidence


def test_migrations_reach_head_and_match_the_models(db: Database) -> None:
    assert migrate.current_revision(db) == migrate.head_revision()
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], f"models and migrations differ: {diffs}"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_sql_files_are_generated_from_the_migrations(dialect: str) -> None:
    committed = (SQL_DIR / f"{dialect}.sql").read_text()
    assert committed == migrate.offline_sql(dialect), (
        f"sql/{dialect}.sql is stale: regenerate it with "
        f"`callconsent db sql --dialect {dialect} > sql/{dialect}.sql` (or `make sql`)"
    )


def test_call_is_opened_once_per_pbx_call_id(ledger: Ledger) -> None:
    first = ledger.open_call(
        pbx="asterisk", pbx_call_id="1795348625.74", campaign="sales", number="0151 1234567"
    )
    again = ledger.open_call(
        pbx="asterisk", pbx_call_id="1795348625.74", campaign="sales", number="0151 1234567"
    )
    assert first.id == again.id
    other = ledger.open_call(pbx="freeswitch", pbx_call_id="1795348625.74", campaign="sales")
    assert other.id != first.id


def test_consent_evidence_is_kept_with_prompt_digests(ledger: Ledger, db: Database) -> None:
    ref = ledger.open_call(
        pbx="asterisk", pbx_call_id="1.1", campaign="sales", number="+4915112345678"
    )
    evidence = decided()
    ledger.log_consent(
        ref.id,
        evidence,
        prompt_digests={"consent": "ab" * 32},
        pbx_call_id="1.1",
        pbx_channel_id="1.2",
    )
    with db.read() as s:
        row = s.get(ConsentRecord, evidence.consent_id)
        call = s.get(Call, ref.id)
    assert row is not None and call is not None
    assert (row.kind, row.status, row.method, row.prompt_id) == (
        "decision",
        "granted",
        "prompt",
        "consent",
    )
    assert row.prompt_sha256 == "ab" * 32 and row.prompts[0]["sha256"] == "ab" * 32
    assert row.digits[0]["digit"] == "1" and row.policy["mode"] == "consent"
    assert row.decided_at.tzinfo is not None and row.decided_at == evidence.decided_at
    assert call.consent_status == "granted"


def test_a_call_has_at_most_one_decision(ledger: Ledger) -> None:
    ref = ledger.open_call(pbx="asterisk", pbx_call_id="1.1", campaign="sales")
    ledger.log_consent(ref.id, decided())
    with pytest.raises(IntegrityError):
        ledger.log_consent(ref.id, decided(digit="2"))


def test_status_change_follows_the_decision(ledger: Ledger, db: Database) -> None:
    ref = ledger.open_call(pbx="freeswitch", pbx_call_id="uuid-1", campaign="sales")
    with pytest.raises(LedgerError, match="no consent decision"):
        ledger.log_status_change(
            ref.id, c.ConsentStatus.WITHDRAWN, "caller_withdrew", datetime.now(UTC)
        )
    ledger.log_consent(ref.id, decided())
    ledger.log_status_change(
        ref.id, c.ConsentStatus.WITHDRAWN, "caller_withdrew", datetime.now(UTC), actor=None
    )
    with db.read() as s:
        kinds = sorted(r.kind for r in s.scalars(sa.select(ConsentRecord)))
        assert kinds == ["change", "decision"]
        assert s.get(Call, ref.id).consent_status == "withdrawn"


class Sink:
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.discarded: list[str] = []

    def recording_closed(self, recording_id: str) -> None:
        self.closed.append(recording_id)

    def recording_discarded(self, recording_id: str) -> None:
        self.discarded.append(recording_id)


def test_recording_life_cycle_tells_the_sink_after_commit(ledger: Ledger, db: Database) -> None:
    sink = Sink()
    ledger.sink = sink
    ref = ledger.open_call(pbx="asterisk", pbx_call_id="1.1", campaign="sales")
    rid = "0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d11"
    ledger.recording_started(ref.id, rid, spool_path=f"/spool/{rid}.wav", pbx_channel="Local/x;2")
    ledger.set_pbx_ref(rid, "0x7f2404011990")
    assert ledger.recording_closed(rid) is True
    assert ledger.recording_closed(rid) is False  # a second close is harmless
    assert ledger.discard(rid, "agent_discard", actor="7001") is True
    assert ledger.discard(rid, "agent_discard") is False
    assert (sink.closed, sink.discarded) == ([rid], [rid])
    with db.read() as s:
        rec = s.get(Recording, rid)
        actions = list(s.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert rec.state == "discarded" and rec.discard_reason == "agent_discard"
    assert rec.pbx_ref == "0x7f2404011990"
    assert actions == [
        "call.opened",
        "recording.started",
        "recording.closed",
        "recording.discarded",
    ]


def test_unknown_recording_is_a_named_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no recording with id nope"):
        ledger.recording_closed("nope")


def test_phone_numbers_are_never_stored_in_clear(ledger: Ledger, db: Database) -> None:
    ref = ledger.open_call(
        pbx="asterisk", pbx_call_id="9.9", campaign="sales", number="+49 151 1234 5678"
    )
    ledger.log_consent(ref.id, decided())
    with db.engine.connect() as conn:
        dump = []
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                dump.append(repr(tuple(row)))
    text = "\n".join(dump)
    assert "15112345678" not in text and "1234 5678" not in text
    with db.read() as s:
        call = s.get(Call, ref.id)
    assert ledger.numbers.reveal(call.number_enc) == "+4915112345678"
    assert call.number_key == ledger.numbers.lookup_key("0151 12345678")


def test_sqlite_page_cache_is_small_and_only_a_purge_enlarges_it(tmp_path: Path) -> None:
    """Every pooled connection keeps SQLite's 2 MiB (16 MiB each grew a long-running daemon's
    RSS); ``write(cache_kib=...)`` enlarges it for its transaction only, also on an error."""
    db = Database(f"sqlite:///{tmp_path / 'c.db'}", pool_size=1, max_overflow=0)

    def cache(s: sa.orm.Session) -> int:
        return s.connection().exec_driver_sql("PRAGMA cache_size").scalar_one()

    with db.read() as s:
        assert cache(s) == -2048
    with db.write(cache_kib=16384) as s:
        assert cache(s) == -16384
    with db.read() as s:  # the pool's one connection, back to the usual size
        assert cache(s) == -2048
    with pytest.raises(RuntimeError), db.write(cache_kib=8192) as s:
        assert cache(s) == -8192
        raise RuntimeError("batch failed")
    with db.read() as s:
        assert cache(s) == -2048
    db.dispose()
