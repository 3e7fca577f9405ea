"""The pages that read what grows with every call (the audit page's check of the whole chain,
the dashboard's totals) keep it (web.kept): a page never waits for a long pass, what is kept
is counted again after its age, and what a page reads at every load is short ranges of
indexes however much the store keeps."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ON_BOTH_STORES, World, add_call

from recorder.store import audit
from recorder.store.models import (
    BULK_ACTORS,
    PEOPLE_ONLY,
    RETENTION_ACTOR,
    AuditEntry,
    Call,
    Recording,
)
from web import dashboard
from web.kept import Kept


def _data(page: str) -> dict[str, Any]:
    found = re.search(r'id="dashboard-data">(.*?)</script>', page, re.S)
    assert found, "no dashboard data in the page"
    return json.loads(found.group(1))


def _age(kept: Kept[Any], seconds: float) -> None:
    """Make what ``kept`` holds ``seconds`` older."""
    now = kept.clock()
    kept.clock = lambda: now + seconds


def _hold(kept: Kept[Any]) -> threading.Event:
    """Hold ``kept``'s passes until the returned event is set."""
    release, compute = threading.Event(), kept._compute

    def held(key: Hashable) -> Any:
        assert release.wait(10)
        return compute(key)

    kept._compute = held
    return release


def test_the_audit_page_shows_its_rows_while_a_long_check_runs(world: World) -> None:
    c = world.client("dpo")
    check = world.services.audit_check
    release = _hold(check)
    check.wait_s = 0.05
    page = c.get("/audit").text
    assert "the first check of the whole chain is running" in page
    assert "recording.encrypted" in page.split("<table")[1]  # the rows are there all the same
    assert "chain intact" not in page
    release.set()
    check.wait_s = 5
    page = c.get("/audit").text
    assert "chain intact" in page and "is running" not in page


@ON_BOTH_STORES
def test_the_dashboard_counts_today_at_once_and_keeps_the_days_before(world: World) -> None:
    c = world.client("supervisor")
    today = datetime.now(UTC).date()
    data = _data(c.get("/dashboard").text)
    assert data["outcomes"] == {"sales": {today.isoformat(): {"granted": 2}}}
    assert data["states"] == {
        "recording": 0, "closed": 0, "encrypted": 2, "discarded": 0, "purged": 0,
    }  # fmt: skip
    stored = data["stored_bytes"]
    assert stored > 0 and data["totals_as_of"] and data["totals_error"] is None

    # a call today: counted at the next load; one three days ago: by the next pass
    add_call(world.rig, "alice")
    earlier, _rid, _wav = add_call(world.rig, "alice", campaign="support")
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    with world.services.db.write() as s:
        s.execute(sa.update(Call).where(Call.id == earlier).values(started_at=three_days_ago))
    data = _data(c.get("/dashboard").text)
    assert data["outcomes"] == {"sales": {today.isoformat(): {"granted": 3}}}
    assert data["states"]["encrypted"] == 2 and data["stored_bytes"] == stored

    _age(world.services.dashboard_totals, dashboard.TOTALS_MAX_AGE_S)
    data = _data(c.get("/dashboard").text)
    assert data["outcomes"] == {
        "sales": {today.isoformat(): {"granted": 3}},
        "support": {three_days_ago.date().isoformat(): {"granted": 1}},
    }
    assert data["states"]["encrypted"] == 4 and data["stored_bytes"] > stored


def test_the_dashboard_shows_today_while_the_first_count_runs(world: World) -> None:
    totals = world.services.dashboard_totals
    release = _hold(totals)
    totals.wait_s = 0.05
    page = world.client("supervisor").get("/dashboard").text
    data = _data(page)
    assert data["outcomes"] == {"sales": {datetime.now(UTC).date().isoformat(): {"granted": 2}}}
    assert data["stored_bytes"] is None and data["totals_as_of"] is None
    assert "encrypted" not in data["states"] and data["states"]["recording"] == 0
    assert "being counted" in page
    release.set()


def test_the_window_is_today_and_the_29_days_before(world: World) -> None:
    c = world.client("supervisor")
    today = datetime.now(UTC).date()
    for days in (29, 30):
        call, _rid, _wav = add_call(world.rig, "alice", campaign=f"back{days}")
        at = datetime.combine(today - timedelta(days=days), datetime.min.time(), UTC)
        with world.services.db.write() as s:
            s.execute(sa.update(Call).where(Call.id == call).values(started_at=at))
    data = _data(c.get("/dashboard").text)
    assert (today - timedelta(days=29)).isoformat() in data["outcomes"]["back29"]
    assert "back30" not in data["outcomes"]


class Steps:
    """SQLite's virtual-machine steps the statements run, in thousands (its progress handler,
    set on each connection a statement runs on): what a statement reads, whatever the plan's
    words say (a search of the state index can walk every encrypted recording)."""

    def __init__(self, db: Any) -> None:
        self.db, self.thousands, self.conns = db, 0, set[Any]()

    def _tick(self) -> int:
        self.thousands += 1
        return 0  # go on

    def _before(self, conn: Any, *_: Any) -> None:
        raw = conn.connection.driver_connection
        raw.set_progress_handler(self._tick, 1000)
        self.conns.add(raw)

    def __enter__(self) -> Steps:
        sa.event.listen(self.db.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.db.engine, "before_cursor_execute", self._before)
        for raw in self.conns:
            raw.set_progress_handler(None, 0)


def _copies(db: Any, table: sa.Table, row_id: str, n: int, **values: str) -> None:
    """``n`` copies of one row of ``table`` (SQLite), new ids, ``values`` set (SQL)."""
    cols = [col.name for col in table.columns]
    fresh = {"id": "lower(hex(randomblob(16)))", "pbx_call_id": "lower(hex(randomblob(10)))"}
    picked = ", ".join(values.get(c) or fresh.get(c) or f"t.{c}" for c in cols)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            f"WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n}) "
            f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT {picked} FROM {table.name} t, k "
            "WHERE t.id = ?",
            (row_id,),
        )


def test_a_dashboard_load_reads_the_same_whatever_the_store_keeps(world: World) -> None:
    """20,000 calls of ten days ago and 20,000 encrypted recordings more: a load reads as
    much as before, once the totals are kept; the pass that counts them reads them all."""
    if world.services.db.dialect != "sqlite":
        pytest.skip("SQLite's progress handler counts what a statement reads")
    c, db = world.client("supervisor"), world.services.db
    c.get("/dashboard")  # the totals, counted now and kept

    def load() -> int:
        with Steps(db) as steps:
            assert _data(c.get("/dashboard").text)["states"]["encrypted"] >= 2
        return steps.thousands

    before = load()
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).strftime("'%Y-%m-%d %H:%M:%S.%f'")
    _copies(db, Call.__table__, world.calls["alice"], 20_000, started_at=ten_days_ago)
    _copies(db, Recording.__table__, world.recordings["alice"], 20_000)
    after = load()
    assert after <= before + 5, (before, after)
    _age(world.services.dashboard_totals, dashboard.TOTALS_MAX_AGE_S)  # the pass, in the load
    counted = load()
    assert counted > after + 40, (after, counted)  # what it reads grows with the store
    assert _data(c.get("/dashboard").text)["states"]["encrypted"] == 20_002


def test_the_bulk_actors_are_the_daemons_and_retentions() -> None:
    """The index by person leaves out exactly the actors that write a row per call or purge."""
    from recorder.governance import retention
    from recorder.store import calljobs, ledger

    assert set(BULK_ACTORS) == {calljobs.SYSTEM_ACTOR, ledger.SYSTEM_ACTOR, retention.ACTOR}
    assert all(f"'{actor}'" in PEOPLE_ONLY for actor in BULK_ACTORS)
    assert RETENTION_ACTOR == retention.ACTOR


def _rows_by(world: World, n: int, actor: str = BULK_ACTORS[0]) -> None:
    """``n`` audit rows by ``actor`` (the daemon unless said) at the tail of the chain."""
    rows = [
        {"actor": actor, "action": "call.opened", "subject_type": "call",
         "subject_id": f"c{i}", "details": {}}
        for i in range(n)
    ]  # fmt: skip
    with world.services.db.write() as s:
        audit.append_many(s, world.services.ctx, rows)


def _audit_seqs(page: str) -> list[int]:
    table = page.split('<table id="audit">')[1]
    return [int(seq) for seq in re.findall(r"<tr><td>(\d+)</td>", table)]


@ON_BOTH_STORES
def test_the_audit_log_by_actor(world: World) -> None:
    c = world.client("dpo")
    _rows_by(world, 3)
    _rows_by(world, 2, RETENTION_ACTOR)
    _rows_by(world, 2)
    with world.services.db.read() as s:
        by_actor: dict[str, list[int]] = {}
        for seq, actor in s.execute(sa.select(AuditEntry.seq, AuditEntry.actor)):
            by_actor.setdefault(actor, []).append(seq)
    assert "test" in by_actor and BULK_ACTORS[0] in by_actor and RETENTION_ACTOR in by_actor
    for actor in ("test", *BULK_ACTORS):  # a person; the daemon; retention
        shown = _audit_seqs(c.get("/audit", params={"actor": actor}).text)
        assert shown == sorted(by_actor[actor], reverse=True)[:100], actor


def test_the_audit_log_by_a_person_reads_the_same_whatever_the_daemon_wrote(
    world: World,
) -> None:
    if world.services.db.dialect != "sqlite":
        pytest.skip("SQLite's progress handler counts what a statement reads")
    c, db = world.client("dpo"), world.services.db
    c.get("/audit")  # the check of the whole chain, done now and kept

    def load() -> tuple[int, list[int]]:
        with Steps(db) as steps:
            seqs = _audit_seqs(c.get("/audit", params={"actor": "test"}).text)
        return steps.thousands, seqs

    before, seqs = load()
    _rows_by(world, 20_000)
    after, seqs_after = load()
    assert seqs and seqs_after == seqs
    assert after <= before + 5, (before, after)


@pytest.mark.parametrize("purged_before", [0, 2], ids=["never purged", "purged twice"])
def test_the_audit_log_by_retention_reads_the_same_whatever_the_daemon_wrote(
    world: World, purged_before: int
) -> None:
    """A store that has not purged yet, or seldom: the log filtered by retention finds its
    rows (or none) without walking the daemon's."""
    if world.services.db.dialect != "sqlite":
        pytest.skip("SQLite's progress handler counts what a statement reads")
    c, db = world.client("dpo"), world.services.db
    c.get("/audit")  # the check of the whole chain, done now and kept
    _rows_by(world, purged_before, RETENTION_ACTOR)

    def load() -> tuple[int, list[int]]:
        with Steps(db) as steps:
            seqs = _audit_seqs(c.get("/audit", params={"actor": RETENTION_ACTOR}).text)
        return steps.thousands, seqs

    before, seqs = load()
    _rows_by(world, 20_000)
    after, seqs_after = load()
    assert len(seqs) == purged_before and seqs_after == seqs
    assert after <= before + 5, (before, after)


@pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_postgresqls_generic_plan_reads_the_log_by_actor_by_its_index(world: World) -> None:
    """psycopg prepares a statement after five runs, and PostgreSQL may then plan it once for
    any actor (a generic plan, ``$1``): only the condition written out lets it use a partial
    index. With 20,000 daemon rows, the page's statement by a person and by retention is
    planned on its index; the same statement for the daemon is not (its rows are in neither)."""
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    from web.queries import audit_statement

    _rows_by(world, 20_000)
    _rows_by(world, 2, RETENTION_ACTOR)
    db = world.services.db
    plans = {}
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE audit_log")
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        for actor in ("test", RETENTION_ACTOR, BULK_ACTORS[0]):
            compiled = audit_statement(None, actor, None, 100).compile(dialect=PGDialect_asyncpg())
            values = tuple(compiled.params[name] for name in compiled.positiontup or ())
            conn.exec_driver_sql(f"PREPARE page AS {compiled.string}")
            args = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in values)
            plan = conn.exec_driver_sql(f"EXPLAIN EXECUTE page({args})").scalars().all()
            conn.exec_driver_sql("DEALLOCATE page")
            plans[actor] = "\n".join(plan)
    assert "ix_audit_log_person_actor" in plans["test"], plans["test"]
    assert "ix_audit_log_retention" in plans[RETENTION_ACTOR], plans[RETENTION_ACTOR]
    assert "ix_audit_log_" not in plans[BULK_ACTORS[0]], plans[BULK_ACTORS[0]]


def test_the_audit_page_names_the_first_problems_and_counts_them_all(world: World) -> None:
    """25 recording rows inserted behind the audit log's back: the count of all, the first 20
    named (the check's process hands back no more), and where to see the rest."""
    if world.services.db.dialect != "sqlite":
        pytest.skip("the rows are copied with SQLite's randomblob")
    _copies(world.services.db, Recording.__table__, world.recordings["alice"], 25)
    page = world.client("dpo").get("/audit").text
    assert "chain intact" in page and "25 tampered" in page
    named = re.findall(r'<p class="error">(recordings [^<]*)</p>', page)
    assert len(named) == 20 and all("inserted without an audit row" in n for n in named), named
    assert "the first 20 of each shown" in page and "audit verify</code> names them all" in page


def test_the_audit_page_says_when_the_check_could_not_run(world: World) -> None:
    check = world.services.audit_check

    def fails(_key: Hashable) -> Any:
        raise OSError("the store is away")

    check._compute = fails
    page = world.client("dpo").get("/audit").text
    verdict = re.search(r'<p id="verify" class="error">([^<]*)</p>', page)
    assert verdict, "no verdict in the page, or not shown as an error"
    assert verdict.group(1) == (
        "audit verify: the whole chain could not be checked; "
        "the last check failed (OSError: the store is away)"
    )


@ON_BOTH_STORES
def test_the_days_are_utc_days_whatever_the_servers_time_zone(world: World) -> None:
    """A call at 00:30 UTC today is today's, also where the database server's time zone is
    UTC-10, where it is 14:30 yesterday (PostgreSQL casts a timestamptz to text in the
    session's time zone)."""
    db = world.services.db
    call, _rid, _wav = add_call(world.rig, "alice", campaign="early")
    today = datetime.now(UTC).date()
    early = datetime.combine(today, datetime.min.time(), UTC) + timedelta(minutes=30)
    with db.write() as s:
        s.execute(sa.update(Call).where(Call.id == call).values(started_at=early))
    if db.dialect == "postgresql":
        with db.engine.begin() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar_one()
            conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone = 'Pacific/Honolulu'")
        db.engine.dispose()  # new connections take it
    try:
        if db.dialect == "postgresql":
            with db.engine.connect() as conn:
                shown = conn.exec_driver_sql(
                    "SELECT CAST(%(at)s::timestamptz AS text)", {"at": early}
                )
                assert shown.scalar_one().startswith(str(today - timedelta(days=1)))
        data = _data(world.client("supervisor").get("/dashboard").text)
        assert data["outcomes"]["early"] == {today.isoformat(): {"granted": 1}}
    finally:
        if db.dialect == "postgresql":
            with db.engine.begin() as conn:
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" RESET timezone')
            db.engine.dispose()
