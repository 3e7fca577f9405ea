"""The database misbehaving while calls are in progress (simulated Asterisk and FreeSWITCH,
the assembled adapters): locked (another writer holds it), then gone, then back. No consent
decision is lost or invented, a call whose evidence cannot be written is not recorded (fail
closed), and the outage is said once (``store_unavailable``), not once per call, then
``store_back``."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import hangup, press
from freeswitch_rig import call as fs_call
from freeswitch_rig import open_app, until
from freeswitch_rig import rows as fs_rows
from freeswitch_rig import run as fs_run
from freeswitch_sim import Caller
from sqlalchemy.orm import sessionmaker
from wirefuzz import LogTap

from recorder import metrics
from recorder.store import audit
from recorder.store.models import AuditEntry, Call, ConsentRecord, Recording

# 10 s in make reliability, 3 s in make test: the same path, the busy wait is the difference
LOCK_S = 10.0 if os.environ.get("CALLCONSENT_RELIABILITY_HEAVY") == "1" else 3.0
ACCEPT = [press("1", "consent", 1.0), hangup("talk", 1.0)]


def test_a_locked_database_delays_the_decision_and_loses_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        db_file = Path(h.app.db.engine.url.database or "")
        blocker = sqlite3.connect(db_file, isolation_level=None, timeout=1)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with LogTap() as tap:
            calls = [asyncio.create_task(h.sim.inbound("sales", ACCEPT)) for _ in range(3)]
            await asyncio.sleep(LOCK_S)
            assert h.rows(ConsentRecord) == [] and not any(c.done() for c in calls)
            released = time.time()
            blocker.execute("COMMIT")
            blocker.close()
            done = await asyncio.wait_for(asyncio.gather(*calls), 60)
            await h.settle()
            records = tap.take()
        assert [c.gosub_retval for c in done] == ["granted"] * 3
        assert [r.levelname for r in records if r.levelno >= logging.ERROR] == []
        # what they waited for, said once by the store's writer: the lock, not the disk
        slow = [r.kv for r in records if r.getMessage() == "store_commit_slow"]
        assert len(slow) == 1 and slow[0]["begin_ms"] >= 900 * LOCK_S, slow
        assert slow[0]["commit_ms"] < 1000, slow
        for c in done:
            row = h.call_row(c.customer.linkedid)
            (decision,) = h.evidence(row.id)
            (rec,) = h.recordings(row.id)
            assert decision.status == "granted" and rec.started_at.timestamp() >= released
        with h.app.db.read() as s:
            order = [
                (a.action, a.subject_id if a.subject_type == "call" else a.details)
                for a in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))
            ]
            report = audit.verify(s)
        assert report.ok
        for c in done:  # each call's evidence was written before its recording began
            call_id = h.call_row(c.customer.linkedid).id
            decided = order.index(("consent.decision", call_id))
            started = next(
                i for i, (act, d) in enumerate(order) if act == "recording.started" and call_id in d
            )
            assert decided < started

    run(tmp_path, scenario)


def test_a_database_gone_means_no_recording_and_nothing_invented_until_it_is_back(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        working = h.app.db._sessions, h.app.db.engine
        gone = sa.create_engine(f"sqlite:///{tmp_path}/no/such/dir/callconsent.db")
        h.app.db._sessions = sessionmaker(gone, expire_on_commit=False)  # the store is gone
        h.app.db.engine = gone  # for the group-commit writer too
        try:
            with LogTap() as tap:
                during = [await h.sim.inbound("sales", ACCEPT) for _ in range(3)]
                await h.settle()
                records = tap.take()
        finally:
            h.app.db._sessions, h.app.db.engine = working  # and back
            gone.dispose()
        for c in during:  # the dialplan's fallback: the call goes on, unrecorded
            assert c.gosub_retval in ("unavailable", "")
            assert c.customer.vars.get("CONSENT_STATUS") in (None, "", "unavailable")
            assert not c.customer.mixmonitors, "no recording without stored evidence"
        assert h.rows(Call) == h.rows(ConsentRecord) == h.rows(Recording) == []
        assert [p.name for p in h.app.spool.path.iterdir()] == []
        # said once for the three calls (and the sweep), with the cause and the fix
        said = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
        assert said == [("ERROR", "store_unavailable")], said
        line = tap.line(next(r for r in records if r.getMessage() == "store_unavailable"))
        assert "unable to open database file" in line and "fix=" in line
        assert not [r for r in records if r.exc_info]
        assert metrics.STORE_UNAVAILABLE._value.get() == 1
        with LogTap() as tap:
            after = await h.sim.inbound("sales", ACCEPT)
            await h.settle()
            back = [
                (r.levelname, r.getMessage()) for r in tap.take() if r.levelno >= logging.WARNING
            ]
        assert back == [("WARNING", "store_back")]
        assert metrics.STORE_UNAVAILABLE._value.get() == 0
        assert after.gosub_retval == "granted"
        (rec,) = h.recordings(h.call_row(after.customer.linkedid).id)
        assert rec.state == "closed"
        with h.app.db.read() as s:
            assert audit.verify(s).ok

    run(tmp_path, scenario)


def test_freeswitch_calls_with_the_database_gone_are_not_recorded_and_said_once(
    tmp_path: Path,
) -> None:
    app = open_app(tmp_path, '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n', ("en",))

    async def scenario(app, fs, svc) -> None:  # type: ignore[no-untyped-def]
        working = app.db._sessions, app.db.engine
        gone = sa.create_engine(f"sqlite:///{tmp_path}/no/such/dir/callconsent.db")
        app.db._sessions = sessionmaker(gone, expire_on_commit=False)
        app.db.engine = gone
        try:
            with LogTap() as tap:
                legs = [
                    await fs_call(fs, svc, "default", Caller(["1", "hangup"])) for _ in range(3)
                ]
                await until(lambda: svc.outbound.active_sessions == 0, "sessions over")
                records = tap.take()
        finally:
            app.db._sessions, app.db.engine = working
            gone.dispose()
        said = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
        assert said == [("ERROR", "store_unavailable")], said
        for leg in legs:
            assert not leg.recordings and "consent_status" not in leg.variables
        assert fs.api_log == [] or not [a for a in fs.api_log if "uuid_record" in a]
        assert fs_rows(app, Call) == fs_rows(app, Recording) == []
        await fs_call(fs, svc, "default", Caller(["1", "hangup"]))
        await until(lambda: [r.state for r in fs_rows(app, Recording)] == ["closed"], "recorded")

    try:
        fs_run(app, scenario)
    finally:
        app.close()


def test_freeswitch_calls_that_hang_up_while_the_database_is_gone_are_ended_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Calls recording when the store goes away hang up meanwhile: their RECORD_STOP and
    CHANNEL_HANGUP_COMPLETE cannot be written. That is said once with the outage (no error
    and no traceback per call), and once the store is back the calls are ended and their
    recordings closed, so the finalizer takes them (not left in the spool until a restart)."""
    app = open_app(tmp_path, '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n', ("en",))

    async def scenario(app, fs, svc) -> None:  # type: ignore[no-untyped-def]
        legs = [await fs_call(fs, svc, "default", Caller(["1"])) for _ in range(2)]
        await until(lambda: len(fs_rows(app, Recording)) == 2, "both recording")
        working = app.db._sessions, app.db.engine
        gone = sa.create_engine(f"sqlite:///{tmp_path}/no/such/dir/callconsent.db")
        app.db._sessions = sessionmaker(gone, expire_on_commit=False)
        app.db.engine = gone
        try:
            with LogTap() as tap:
                for leg in legs:
                    await fs.hangup_leg(leg)
                await asyncio.sleep(1.0)
                records = tap.take()
        finally:
            app.db._sessions, app.db.engine = working
            gone.dispose()
        said = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
        assert said == [("ERROR", "store_unavailable")], said
        assert not [r for r in records if r.exc_info]
        await fs_call(fs, svc, "default", Caller(["1", "hangup"]))  # the store is back
        await until(
            lambda: all(c.ended_at is not None for c in fs_rows(app, Call)), "all calls ended"
        )
        await until(
            lambda: [r.state for r in fs_rows(app, Recording)] == ["closed"] * 3,
            "the three recordings closed",
        )

    try:
        fs_run(app, scenario)
    finally:
        app.close()
