"""/metrics' recordings by state: exact for the states a recording works through at every
scrape, the end states (which grow with every recording kept) at most every
END_STATES_EVERY_S, and a scrape's working-state count never walks the end states."""

from __future__ import annotations

import uuid

import pytest
from clock import Clock
from sqlalchemy import event, update

from callconsent import metrics_server
from callconsent.metrics_server import RecordingsByState
from recorder.store.db import Database
from recorder.store.ledger import Ledger
from recorder.store.models import Recording


def _recording(ledger: Ledger, state: str) -> str:
    call = ledger.open_call(pbx="asterisk", pbx_call_id=uuid.uuid4().hex[:20], campaign="t")
    rid = str(uuid.uuid4())
    ledger.recording_started(call.id, rid, spool_path=f"/nonexistent/{rid}.wav")
    if state != "recording":
        with ledger.db.write() as s:
            s.execute(update(Recording).where(Recording.id == rid).values(state=state))
    return rid


def _scrape(collector: RecordingsByState) -> dict[str, float]:
    (family,) = collector.collect()
    assert family.name == "callconsent_recordings"
    return {sample.labels["state"]: sample.value for sample in family.samples}


def test_every_state_is_counted_and_the_end_states_at_most_every_interval(
    ledger: Ledger, db: Database
) -> None:
    clock = Clock()
    collector = RecordingsByState(db, clock=clock)
    for state, n in (("recording", 2), ("closed", 1), ("encrypted", 3), ("purged", 1)):
        for _ in range(n):
            _recording(ledger, state)
    assert _scrape(collector) == {
        "recording": 2, "closed": 1, "encrypted": 3, "discarded": 0, "purged": 1,
    }  # fmt: skip

    # a call recorded and one finalized since: the working states at once, the end states not
    _recording(ledger, "closed")
    _recording(ledger, "encrypted")
    clock.now += metrics_server.END_STATES_EVERY_S - 1
    assert _scrape(collector) == {
        "recording": 2, "closed": 2, "encrypted": 3, "discarded": 0, "purged": 1,
    }  # fmt: skip

    clock.now += 1
    assert _scrape(collector) == {
        "recording": 2, "closed": 2, "encrypted": 4, "discarded": 0, "purged": 1,
    }  # fmt: skip


def test_a_scrape_walks_only_the_working_states_part_of_the_state_index(
    ledger: Ledger, db: Database
) -> None:
    """SQLite's plan for what a scrape runs (caught as it runs), once the end states have
    been counted: a search of the state index, as short as the calls in progress and the
    finalizer's backlog however many recordings are kept, never a scan of them."""
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL's planner picks by its statistics; the query is the same")
    clock = Clock()
    collector = RecordingsByState(db, clock=clock)
    _recording(ledger, "encrypted")
    _scrape(collector)  # the end states, counted now and not again for a while
    ran: list[tuple[str, object]] = []

    def caught(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "count(" in statement.lower():
            ran.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", caught)
    try:
        assert _scrape(collector)["encrypted"] == 1
    finally:
        event.remove(db.engine, "before_cursor_execute", caught)
    assert len(ran) == 1, ran
    statement, parameters = ran[0]
    with db.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    details = " | ".join(row[-1] for row in plan)
    assert "SEARCH recordings USING COVERING INDEX ix_recordings_state_expires_at (state=?)" in (
        details
    ), details
