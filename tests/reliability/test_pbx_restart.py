"""The PBX restarting while calls are in progress (simulated Asterisk, the assembled adapter,
the real finalizer reconciling every half second).

The PBX dies: its AMI connection closes, its channels vanish without a ``Hangup`` event, and
its MixMonitors stop without finalizing their WAV headers (sizes still 0, as Asterisk leaves
them until the file closes); its FastAGI sessions end. It comes back with no channel, and our
AMI client logs in again. The calls it forgot are closed out in the store (by the consent
sessions' ends; failing those, by the check after the re-login, which asks for each channel:
``call_ended_while_ami_was_away``); the finalizer repairs each header from the file's size
once the file has settled (audited as ``recording.header_repaired``) and encrypts it, so no
plaintext is left, nothing is lost or duplicated, no error is logged, and the chain
verifies. A call placed after the restart is decided and recorded as usual.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import sqlalchemy as sa
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import SimChannel, hangup, press
from freeswitch_rig import call as fs_call
from freeswitch_rig import open_app
from freeswitch_rig import rows as fs_rows
from freeswitch_rig import run as fs_run
from freeswitch_rig import until as fs_until
from freeswitch_sim import Caller, FakeFreeSwitch
from recstore import make_rig
from test_disk_faults import recordings, start_calls, until
from wirefuzz import LogTap

from callconsent.app import App
from esl_listener.service import FreeswitchService
from recorder.finalize.finalizer import FinalizerSettings
from recorder.store import audit
from recorder.store.models import AuditEntry, Call, Recording


def crash(chan: SimChannel) -> None:
    """The channel (and the Local channel's other half) vanishes as a crashed PBX's do: no
    event, no dialplan hangup handler, no WAV header written."""
    for c in (chan, chan.local_half):
        if c is not None:
            c.alive = False
            c.destroyed = True
            c.gone.set()


def test_a_pbx_restart_closes_out_the_calls_it_forgot_and_their_recordings(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=0.5, settle_s=1.0, not_final_retries=(0.01,)
        )
        rig = make_rig(h.app, settings=settings)
        await rig.finalizer.start()
        ami = h.service.adapter.ami
        assert ami is not None
        try:
            with LogTap() as tap:
                tasks, legs = await start_calls(h, 3)
                # the PBX dies: no Hangup, no header written, the AMI connection gone
                for leg in legs:
                    for mon in leg.mixmonitors.values():
                        mon.active = False
                        if mon._task is not None:
                            mon._task.cancel()
                h.sim.ami.kick_all()
                await h.sim.wait_until(lambda: not ami.connected, wait_s=20)
                for leg in legs:  # gone without a Hangup event or a hangup handler's AGI
                    crash(leg)
                await asyncio.wait_for(asyncio.gather(*tasks), 20)
                # ... and is back, without those channels: our client logs in again
                await h.sim.wait_until(lambda: ami.logins == 2, wait_s=20)
                await until(
                    lambda: [r.state for r in recordings(h)] == ["encrypted"] * 3,
                    "the three recordings repaired and encrypted",
                    30,
                )
                after = await h.sim.inbound("sales", [press("1"), hangup("talk", 1.0)])
                await h.settle()
                await until(lambda: recordings(h)[-1].state == "encrypted", "the next call", 30)
                records = tap.take()
        finally:
            await rig.finalizer.stop()
        assert after.gosub_retval == "granted"
        with h.app.db.read() as s:
            calls = list(s.scalars(sa.select(Call)))
            repaired = s.scalars(
                sa.select(AuditEntry.subject_id).where(
                    AuditEntry.action == "recording.header_repaired"
                )
            ).all()
            assert audit.verify(s).ok
        assert len(calls) == 4 and all(c.ended_at is not None for c in calls)
        assert sorted(repaired) == sorted(r.id for r in recordings(h)[:3])
        assert len(recordings(h)) == 4  # one each: nothing lost or duplicated
        assert not list(h.app.spool.path.iterdir())  # no plaintext left
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
        assert not [r for r in records if r.exc_info]

    run(tmp_path, scenario)


FS_CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-test"

[policies.default]
digit_timeout_ms = 3000
"""


def test_a_freeswitch_restart_closes_out_the_calls_it_forgot_and_their_recordings(
    tmp_path: Path,
) -> None:
    """FreeSWITCH dies with three calls recording: its event socket closes, the legs vanish
    without RECORD_STOP or CHANNEL_HANGUP_COMPLETE, the WAV headers keep their 0 sizes. It
    comes back without them: our inbound client reconnects, asks ``uuid_exists`` for each
    call it holds and ends them; the finalizer repairs the headers and encrypts."""
    app = open_app(tmp_path, FS_CONFIG, ("en",))

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=0.5, settle_s=1.0, not_final_retries=(0.01,)
        )
        rig = make_rig(app, settings=settings)
        await rig.finalizer.start()
        try:
            with LogTap() as tap:
                legs = [await fs_call(fs, svc, "default", Caller(["1"])) for _ in range(3)]
                await fs_until(lambda: len(fs_rows(app, Recording)) == 3, "three recording")
                for leg in legs:
                    fs.talk(leg, 1.0)
                    leg.up = False  # gone without an event; its recording never closed
                    leg.recordings.clear()
                await fs.drop_inbound()  # ... and back with no channel
                await fs_until(lambda: svc.inbound.connections == 2, "reconnected")
                await until(
                    lambda: [r.state for r in fs_rows(app, Recording)] == ["encrypted"] * 3,
                    "the three recordings repaired and encrypted",
                    30,
                )
                after = await fs_call(fs, svc, "default", Caller(["1"]))
                await fs.hangup_leg(after)
                await until(
                    lambda: (
                        len(fs_rows(app, Recording)) == 4
                        and all(r.state == "encrypted" for r in fs_rows(app, Recording))
                    ),
                    "the next call recorded and encrypted",
                    30,
                )
                records = tap.take()
        finally:
            await rig.finalizer.stop()
        calls, recs = fs_rows(app, Call), fs_rows(app, Recording)
        with app.db.read() as s:
            repaired = s.scalars(
                sa.select(AuditEntry.subject_id).where(
                    AuditEntry.action == "recording.header_repaired"
                )
            ).all()
            assert audit.verify(s).ok
        assert len(calls) == 4 and all(c.ended_at is not None for c in calls)
        assert all(f"uuid_exists {leg.uuid}" in fs.api_log for leg in legs)
        forgotten = {r.id for r in recs if r.call_id in {c.id for c in calls[:3]}}
        assert sorted(repaired) == sorted(forgotten)  # the restart's three, not the next one
        assert not list(app.spool.path.iterdir())  # no plaintext left
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
        assert not [r for r in records if r.exc_info]

    try:
        fs_run(app, scenario)
    finally:
        app.close()
