"""PostgreSQL stopped while calls are in progress, then started again (simulated Asterisk
and FreeSWITCH, the assembled adapters, a private PostgreSQL cluster this test stops).

Before: calls are decided and recorded. While it is down: a new call's evidence cannot be
written, so it is not recorded (fail closed: the dialplan's fallback), no row of it appears
later (nothing invented), and the outage is said once (``store_unavailable``, with the cause
and the fix), not once per call; the gauge ``callconsent_store_unavailable`` is 1. Calls
already recording when it stopped hang up meanwhile: their ends are retried (said once with
the rest), and written, their recordings finalised, once it is back. After it is back:
``store_back`` once, the gauge 0, the next call decided and recorded, every decision stored
before the outage still there exactly once, and the chain verifies.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pg
import pytest
import sqlalchemy as sa
from asterisk_harness import Harness, harness
from asterisk_sim import hangup, press
from freeswitch_rig import call as fs_call
from freeswitch_rig import open_app
from freeswitch_rig import rows as fs_rows
from freeswitch_rig import run as fs_run
from freeswitch_rig import until as fs_until
from freeswitch_sim import Caller
from recstore import make_rig
from test_disk_faults import said, start_calls, until
from wirefuzz import LogTap

from recorder import metrics
from recorder.finalize.finalizer import FinalizerSettings
from recorder.store import audit, migrate
from recorder.store.db import Database
from recorder.store.models import Call, ConsentRecord, Recording

pytestmark = pytest.mark.postgres
ACCEPT = [press("1", "consent", 1.0), hangup("talk", 1.0)]


def rows(h: Harness, model: type) -> list:  # type: ignore[type-arg]
    with h.app.db.read() as s:
        return list(s.scalars(sa.select(model)))


def test_postgres_stopped_under_load_fails_closed_says_once_and_recovers(
    tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    with pg.fresh_database(pg_cluster.url) as url:
        db = Database(url)
        migrate.upgrade(db)  # PostgreSQL: `callconsent db upgrade`, never at start-up
        db.dispose()

        async def main() -> None:
            database = f'[database]\nurl = "{url}"\n'
            async with harness(tmp_path, policies=database) as h:
                await scenario(h, pg_cluster)

        asyncio.run(main())


async def scenario(h: Harness, pg_cluster: pg.Cluster) -> None:
    settings = FinalizerSettings(reconcile_interval_s=3600, settle_s=3600)
    rig = make_rig(h.app, settings=settings)
    await rig.finalizer.start()
    try:
        before = [await h.sim.inbound("sales", ACCEPT) for _ in range(2)]
        await h.settle()
        assert [c.gosub_retval for c in before] == ["granted"] * 2
        tasks, legs = await start_calls(h, 2)  # recording when the server stops
        decided = {(e.call_id, e.status) for e in rows(h, ConsentRecord)}
        with LogTap() as tap:
            await asyncio.to_thread(pg_cluster.stop)
            during = [await h.sim.inbound("sales", ACCEPT) for _ in range(3)]
            for leg in legs:  # their ends cannot be written now: retried until it is back
                h.sim.hangup(leg)
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
            await asyncio.sleep(2.0)  # a few retries
            down = tap.take()
            assert metrics.STORE_UNAVAILABLE._value.get() == 1
            await asyncio.to_thread(pg_cluster.start)
            await asyncio.wait_for(h.settle(), 30)  # the ends are written now
            after = await h.sim.inbound("sales", ACCEPT)
            await asyncio.wait_for(h.settle(), 30)
            back = tap.take()
        for c in during:  # fail closed: the dialplan's fallback, no recording
            assert c.gosub_retval in ("unavailable", "")
            assert c.customer.vars.get("CONSENT_STATUS") in (None, "", "unavailable")
            assert not c.customer.mixmonitors
        events = said(down)
        assert events.count(("ERROR", "store_unavailable")) == 1, events
        line = tap.line(next(r for r in down if r.getMessage() == "store_unavailable"))
        assert "fix=" in line and "connect" in line.lower(), line
        assert ("WARNING", "store_back") in said(back)
        assert metrics.STORE_UNAVAILABLE._value.get() == 0
        assert after.gosub_retval == "granted"
        # nothing lost, nothing invented
        known = {c.customer.linkedid for c in [*before, after]} | {leg.linkedid for leg in legs}
        assert {c.pbx_call_id for c in rows(h, Call)} == known
        evidence = {(e.call_id, e.status) for e in rows(h, ConsentRecord)}
        assert decided <= evidence and len(evidence) == len(decided) + 1
        assert len(rows(h, ConsentRecord)) == len(evidence)  # one decision per call
        # the calls that hung up during the outage were ended, and recorded, once it was back
        await until(
            lambda: [r.state for r in rows(h, Recording)] == ["encrypted"] * 5,
            "the five recordings encrypted (2 before, 2 hung up during the outage, 1 after)",
        )
        assert all(c.ended_at is not None for c in rows(h, Call))
        assert not [p for p in h.app.spool.path.iterdir()]  # no plaintext left
        with h.app.db.read() as s:
            assert audit.verify(s).ok
        records = down + back
        assert not [r for r in records if r.exc_info], [
            (r.getMessage(), r.levelname) for r in records if r.exc_info
        ]
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == [
            "store_unavailable"
        ]
    finally:
        await rig.finalizer.stop()


def test_postgres_stopped_with_freeswitch_calls_in_progress(
    tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    """The same through the FreeSWITCH adapter: two calls recording when it stops hang up
    meanwhile and one arrives; said once; started again, both are ended and their recordings
    closed, the one that arrived during the outage left no row and was not recorded."""
    with pg.fresh_database(pg_cluster.url) as url:
        db = Database(url)
        migrate.upgrade(db)
        db.dispose()
        config = f'[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n\n[database]\nurl = "{url}"\n'
        app = open_app(tmp_path, config, ("en",))

        async def scenario(app, fs, svc) -> None:  # type: ignore[no-untyped-def]
            legs = [await fs_call(fs, svc, "default", Caller(["1"])) for _ in range(2)]
            await fs_until(lambda: len(fs_rows(app, Recording)) == 2, "both recording")
            with LogTap() as tap:
                await asyncio.to_thread(pg_cluster.stop)
                for leg in legs:
                    await fs.hangup_leg(leg)
                during = await fs_call(fs, svc, "default", Caller(["1", "hangup"]))
                await fs_until(lambda: svc.outbound.active_sessions == 0, "sessions over")
                await asyncio.sleep(1.0)
                down = tap.take()
                await asyncio.to_thread(pg_cluster.start)
                await until(
                    lambda: [r.state for r in fs_rows(app, Recording)] == ["closed"] * 2,
                    "both recordings closed once it is back",
                )
                await until(
                    lambda: all(c.ended_at is not None for c in fs_rows(app, Call)),
                    "both calls ended",
                )
                back = tap.take()
            assert not during.recordings and "consent_status" not in during.variables
            assert len(fs_rows(app, Call)) == 2  # nothing invented for the third
            events = said(down)
            assert events == [("ERROR", "store_unavailable")], events
            assert said(back) == [("WARNING", "store_back")]
            assert not [r for r in down + back if r.exc_info]

        try:
            fs_run(app, scenario)
        finally:
            app.close()
