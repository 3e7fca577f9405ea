"""A call from before a daemon restart (an orphan): its recording is encrypted as soon as the
call's end is known, not at the finalizer's next reconcile pass (issue 14, point 3). Asterisk
sends no event when MixMonitor closes the file, so the adapter checks the file itself once the
restarted daemon learns the call is over: at its hangup, or at the login sweep if it hung up
while the daemon was down. The finalizer here never reconciles (interval 1 h)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import SimChannel, hangup, press
from recstore import make_rig

from recorder.finalize.finalizer import FinalizerSettings

NEVER_S = 3600.0  # no reconcile pass, no settle-based repair within the test
QUICK_S = 3.0  # "at once": well under one reconcile_interval_s (55 s on the lab's daemon)


async def call_then_daemon_restart(h: Harness) -> tuple[SimChannel, asyncio.Task]:
    """A consented, bridged, recorded call; then the daemon forgets it (it restarted)."""
    script = [press("1", "consent", 1.0), hangup("talk", 60.0)]
    task = asyncio.create_task(h.sim.inbound("sales", script, agent_script=[]))
    await h.sim.wait_until(lambda: h.sim.customers() and h.sim.customers()[-1].peer is not None)
    cust = h.sim.customers()[-1]
    h.app.calls.forget("asterisk", cust.linkedid)  # the daemon's memory is gone
    h.service.adapter.registry.drop(cust.linkedid)
    return cust, task


@pytest.mark.parametrize("hangup_first", [False, True], ids=["hangs-up-later", "hung-up-meanwhile"])
def test_an_orphaned_calls_recording_is_encrypted_once_its_end_is_known(
    tmp_path: Path, hangup_first: bool
) -> None:
    async def scenario(h: Harness) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=NEVER_S, settle_s=NEVER_S, not_final_retries=(0.01,)
        )
        rig = make_rig(h.app, settings=settings)  # the real finalizer as the ledger's sink
        await rig.finalizer.start()
        try:
            cust, task = await call_then_daemon_restart(h)
            adapter = h.service.adapter
            if hangup_first:
                h.sim.hangup(cust)  # a Hangup nobody holds
                await task
            adapter.on_ami_ready()  # the restarted daemon's login sweeps the open calls
            if not hangup_first:
                await h.sim.wait_until(lambda: adapter.orphans.watches(cust.uid))
                h.sim.hangup(cust)
                await task
            ended = time.monotonic()
            row = h.call_row(cust.linkedid)
            states: list[str] = []
            while time.monotonic() - ended < QUICK_S:
                states = [r.state for r in h.recordings(row.id)]
                if states == ["encrypted"]:
                    break
                await asyncio.sleep(0.05)
            assert states == ["encrypted"], f"still {states} {QUICK_S} s after the call ended"
            assert h.call_row(cust.linkedid).ended_at is not None
            (rec,) = h.recordings(row.id)
            assert not await asyncio.to_thread(os.path.exists, rec.spool_path)  # no plaintext
        finally:
            await rig.finalizer.stop()

    run(tmp_path, scenario)
