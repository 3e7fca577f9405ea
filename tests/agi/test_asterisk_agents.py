"""Outbound calls, listen-in that follows consent, the caller's withdraw key, the whisper,
and ``callconsent record`` through the daemon's control socket — against the simulator."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asterisk_flows import run
from asterisk_harness import SYSTEM_USER, Harness
from asterisk_sim import SimChannel, hangup, press

from callconsent.control import ControlServer, request


def customer(h: Harness) -> SimChannel:
    return h.sim.customers()[-1]


async def call_then_daemon_restart(h: Harness, campaign: str) -> tuple[SimChannel, asyncio.Task]:
    """A consented, bridged, recorded call; then the daemon forgets it (it restarted)."""
    script = [press("1", "consent", 1.0), hangup("talk", 60.0)]
    call_task = asyncio.create_task(h.sim.inbound(campaign, script, agent_script=[]))
    await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
    cust = customer(h)
    h.app.calls.forget("asterisk", cust.linkedid)  # the daemon's memory is gone
    h.service.adapter.registry.drop(cust.linkedid)
    return cust, call_task


def test_outbound_on_demand_the_agent_starts_pauses_and_stops(tmp_path: Path) -> None:
    policies = '[policies.support]\nmode = "on_demand"\n'
    agent_script = [press("*41", "talk", 1.0), press("*42", "talk", 1.0), press("*43", "talk", 1.0)]

    async def scenario(h: Harness) -> None:
        # the customer hangs up once the agent's last code has run: a hangup at a fixed time
        # raced the codes on a slow CI host (the pause never reached the PBX)
        call = await h.sim.outbound("support", "alice", "+4930123456", [], agent_script)
        await h.settle()
        cust = call.customer
        row = h.call_row(cust.linkedid)
        assert (row.direction, row.agent, row.number_kind) == ("outbound", "alice", "e164")
        decision, change = h.evidence(row.id)
        assert (decision.status, decision.method) == ("not_required", "policy")
        assert (change.status, change.method, change.actor) == (
            "granted",
            "agent_attested",
            "alice",
        )
        (rec,) = h.recordings(row.id)
        assert rec.state == "closed" and rec.pbx_channel == cust.uid  # the customer's leg
        assert [e[2] for e in cust.events if e[0] == "MixMonitorMute"] == ["1"]
        assert "DYNAMIC_FEATURES" not in cust.vars  # the customer never gets the agent codes
        assert call.agent is not None and "ccstart" in call.agent.vars["DYNAMIC_FEATURES"]

    run(tmp_path, scenario, policies=policies)


@pytest.mark.parametrize(
    "extra",
    ["", 'record_from = "agent_answer"\n', 'record_from = "agent_answer"\nbeep_interval_s = 15\n'],
    ids=["from-consent", "from-answer", "from-answer-beeping"],
)
def test_outbound_always_announces_and_records_from_the_answer(tmp_path: Path, extra: str) -> None:
    """With a beep the recording waits for the dialogue's last prompt; one started after the
    dialogue (the agent's answer on an outbound call) must still start."""
    policies = '[policies.collections]\nmode = "always"\nlegal_basis = "legal_obligation"\n'

    async def scenario(h: Harness) -> None:
        call = await h.sim.outbound("collections", "bob", "+4930123456", [hangup("talk", 2.0)], [])
        await h.settle()
        cust = call.customer
        assert cust.heard == ["notice"]
        row = h.call_row(cust.linkedid)
        assert h.evidence(row.id)[0].method == "notice"
        (rec,) = h.recordings(row.id)
        assert rec.state == "closed"
        assert len(h.sim.exec_log) == 1  # one MixMonitor, on the customer leg

    run(tmp_path, scenario, policies=policies + extra)


def test_outbound_never_refuses_the_start_code(tmp_path: Path) -> None:
    policies = '[policies.quiet]\nmode = "never"\n'

    async def scenario(h: Harness) -> None:
        call = await h.sim.outbound(
            "quiet", "carol", "+4930123456", [hangup("talk", 3.0)], [press("*41", "talk", 1.0)]
        )
        await h.settle()
        assert h.recordings(h.call_row(call.customer.linkedid).id) == []
        assert call.agent is not None and call.agent.heard_dtmf == ["#"]  # refused: a tone

    run(tmp_path, scenario, policies=policies)


def test_listening_follows_consent_and_a_withdrawal_cuts_the_listener_off(tmp_path: Path) -> None:
    policies = '[policies.care]\nmonitoring_allowed = true\nwithdraw_digit = "9"\n'

    async def scenario(h: Harness) -> None:
        script = [press("1", "consent", 1.0), press("9", "talk", 5.0), hangup("talk", 3.0)]
        call_task = asyncio.create_task(h.sim.inbound("care", script, agent_script=[]))
        await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
        cust = customer(h)
        assert cust.vars["SPYGROUP"] == "consented"
        assert cust.vars["DYNAMIC_FEATURES"] == "ccwithdraw_9"  # the caller's key, own leg only
        assert await h.sim.listen(cust)  # a supervisor hears the consented call
        spy_uid = h.sim.spied[-1][0]
        await h.sim.wait_until(lambda: h.service.adapter.registry.by_spy(spy_uid) is not None)
        call = await call_task
        await h.settle()
        assert call.customer.vars["CONSENT_STATUS"] == "withdrawn"
        assert call.customer.vars["SPYGROUP"] == ""
        assert call.customer.vars["DYNAMIC_FEATURES"] == ""
        assert h.sim.find_channel(spy_uid) is None  # the listener was hung up
        row = h.call_row(call.customer.linkedid)
        assert [(e.status, e.method) for e in h.evidence(row.id)] == [
            ("granted", "prompt"),
            ("withdrawn", "caller_withdrew"),
        ]
        (rec,) = h.recordings(row.id)
        assert (rec.state, rec.discard_reason) == ("discarded", "consent_withdrawn")
        assert (call.agent is not None and "DYNAMIC_FEATURES" not in call.agent.vars) or (
            "ccwithdraw" not in call.agent.vars.get("DYNAMIC_FEATURES", "")
        )

    run(tmp_path, scenario, policies=policies)


def test_a_declined_call_cannot_be_listened_to(tmp_path: Path) -> None:
    policies = "[policies.care]\nmonitoring_allowed = true\n"

    async def scenario(h: Harness) -> None:
        script = [press("2", "consent", 1.0), hangup("talk", 5.0)]
        call_task = asyncio.create_task(h.sim.inbound("care", script, agent_script=[]))
        await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
        assert not await h.sim.listen(customer(h))  # ChanSpy ...S returns at once
        await call_task

    run(tmp_path, scenario, policies=policies)


def test_the_agent_hears_the_consent_status_when_the_campaign_asks(tmp_path: Path) -> None:
    policies = "[policies.sales]\nwhisper = true\n"

    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 1.0)], agent_script=[])
        assert call.agent is not None and call.agent.heard == ["agent-status-granted"]

    run(tmp_path, scenario, policies=policies)


def test_callconsent_record_reaches_the_call_through_the_daemon(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        control = ControlServer(tmp_path / "control.sock", h.app.calls)
        await control.start()
        try:
            script = [press("1", "consent", 1.0), hangup("talk", 30.0)]
            call_task = asyncio.create_task(h.sim.inbound("sales", script, agent_script=[]))
            await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
            cust = customer(h)

            async def record(verb: str) -> dict:
                payload = {"op": "record", "verb": verb, "call": cust.linkedid, "actor": "dpo"}
                return await asyncio.to_thread(request, tmp_path / "control.sock", payload)

            assert (await record("pause"))["done"] == ["PauseRecording"]
            assert (await record("stop"))["done"] == ["StopRecording"]
            started = await record("start")
            if h.service.adapter.ami_system is None:
                assert not started["ok"] and "write=system" in started["error"]
            else:
                assert started["ok"] and "StartRecording" in started["done"]
            h.sim.hangup(cust)
            await call_task
            await h.settle()
            row = h.call_row(cust.linkedid)
            states = [r.state for r in h.recordings(row.id)]
            assert states == (
                ["closed"] if h.service.adapter.ami_system is None else ["closed"] * 2
            )
            assert next(e for e in cust.events if e[0] == "MixMonitorMute")[2] == "1"
        finally:
            await control.stop()

    run(tmp_path / "a", scenario)
    run(tmp_path / "b", scenario, system_user=SYSTEM_USER)


def test_after_a_daemon_restart_the_cli_and_the_agents_still_reach_the_call(
    tmp_path: Path,
) -> None:
    """The call book rebuilds a decided call from the store; the adapter gives it back its
    customer leg, its open recording and its AMI control."""

    async def scenario(h: Harness) -> None:
        control = ControlServer(tmp_path / "control.sock", h.app.calls)
        await control.start()
        try:
            script = [press("1", "consent", 1.0), hangup("talk", 60.0)]
            agent_script = [press("*42", "talk", 30.0)]  # resume, long after the restart
            call_task = asyncio.create_task(
                h.sim.inbound("sales", script, agent_script=agent_script)
            )
            await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
            cust = customer(h)
            h.app.calls.forget("asterisk", cust.linkedid)  # the daemon's memory is gone
            h.service.adapter.registry.drop(cust.linkedid)
            payload = {"op": "record", "verb": "pause", "call": cust.linkedid}
            reply = await asyncio.to_thread(request, tmp_path / "control.sock", payload)
            assert reply["ok"] and reply["done"] == ["PauseRecording"], reply
            row = h.call_row(cust.linkedid)
            (rec,) = h.recordings(row.id)
            assert [e for e in cust.events if e[0] == "MixMonitorMute"] == [
                ("MixMonitorMute", rec.pbx_ref, "1")
            ]
            await h.sim.wait_until(lambda: len(cust.events) >= 2, wait_s=10)  # *42: resume
            h.sim.hangup(cust)
            await call_task
            await h.settle()
            assert [e[2] for e in cust.events if e[0] == "MixMonitorMute"] == ["1", "0"]
            (rec,) = h.recordings(row.id)
            assert rec.state == "closed"  # the restored call's recording closed at hangup
            assert h.call_row(cust.linkedid).ended_at is not None
        finally:
            await control.stop()

    run(tmp_path, scenario)


def test_a_held_back_beeping_recording_cannot_be_stopped_before_it_starts(
    tmp_path: Path,
) -> None:
    """A beeping recording waits for the dialogue's last prompt (docs/asterisk.md). A stop
    while the caller still hears it is refused by the consent machine (the dialogue is
    running), so the held start can never follow a stop; the recording then starts."""

    async def scenario(h: Harness) -> None:
        control = ControlServer(tmp_path / "control.sock", h.app.calls)
        await control.start()
        try:
            script = [press("1", "consent", 1.0), hangup("talk", 1.0)]
            call_task = asyncio.create_task(h.sim.inbound("sales", script))
            await h.sim.wait_until(
                lambda: h.sim.customers() and any("thanks" in p for p in customer(h).heard)
            )
            cust = customer(h)
            payload = {"op": "record", "verb": "stop", "call": cust.linkedid, "actor": "dpo"}
            stopped = await asyncio.to_thread(request, tmp_path / "control.sock", payload)
            assert not stopped["ok"] and "dialogue is still running" in stopped["error"]
            await call_task
            await h.settle()
            assert len(h.sim.exec_log) == 1  # MixMonitor ran once, after the prompt
            (rec,) = h.recordings(h.call_row(cust.linkedid).id)
            assert rec.state == "closed"
        finally:
            await control.stop()

    run(tmp_path, scenario, policies="[policies.sales]\nbeep_interval_s = 15\n")


@pytest.mark.parametrize("hangup_first", [False, True], ids=["hangs-up-later", "hung-up-meanwhile"])
def test_a_call_from_before_a_daemon_restart_is_ended_in_the_store(
    tmp_path: Path, hangup_first: bool
) -> None:
    """The restarted daemon holds nothing of a call in progress; its AMI login sweeps the
    store's open calls (recorder.live.orphans). Ended, the call's recording is adopted by the
    finalizer; open for ever, its plaintext would stay in the spool."""

    async def scenario(h: Harness) -> None:
        cust, call_task = await call_then_daemon_restart(h, "sales")
        if hangup_first:
            h.sim.hangup(cust)  # a Hangup nobody holds
            await call_task
        adapter = h.service.adapter
        adapter.on_ami_ready()  # the restarted daemon's login
        if not hangup_first:
            await h.sim.wait_until(lambda: adapter.orphans.watches(cust.uid))
            assert h.call_row(cust.linkedid).ended_at is None  # still up
            h.sim.hangup(cust)
            await call_task
        await h.sim.wait_until(lambda: h.call_row(cust.linkedid).ended_at is not None)
        row_id = h.call_row(cust.linkedid).id
        # handed to the recorder at once, not at the finalizer's next reconcile pass
        await h.sim.wait_until(lambda: [r.state for r in h.recordings(row_id)] == ["closed"])
        (rec,) = h.recordings(row_id)
        await h.sim.wait_until(lambda: h.sink.closed == [rec.id])  # told after the commit

    run(tmp_path, scenario)


def test_the_withdraw_key_marks_the_channel_before_its_agi(tmp_path: Path) -> None:
    """callconsent-withdraw (the feature's Gosub) sets CONSENT_WITHDRAWN, then runs the AGI."""
    policies = '[policies.care]\nwithdraw_digit = "9"\n'

    async def scenario(h: Harness) -> None:
        script = [press("1", "consent", 1.0), press("9", "talk", 2.0), hangup("talk", 1.0)]
        call = await h.sim.inbound("care", script, agent_script=[])
        await h.settle()
        assert call.customer.vars["CONSENT_WITHDRAWN"] == "1"
        assert h.call_row(call.customer.linkedid).consent_status == "withdrawn"

    run(tmp_path, scenario, policies=policies)


def test_a_withdrawal_while_the_daemon_was_down_is_acted_on_at_its_login(tmp_path: Path) -> None:
    """The caller pressed the withdraw key while callconsent was down: the AGI failed, the
    mark stayed. The restarted daemon's sweep finds the call up and marked, rebuilds it and
    withdraws: the recording stops (over AMI, by its MixMonitorID) and is discarded."""
    policies = '[policies.care]\nwithdraw_digit = "9"\n'

    async def scenario(h: Harness) -> None:
        cust, call_task = await call_then_daemon_restart(h, "care")
        cust.set_var("CONSENT_WITHDRAWN", "1")  # what callconsent-withdraw left, AGI failed
        h.service.adapter.on_ami_ready()
        await h.sim.wait_until(lambda: h.call_row(cust.linkedid).consent_status == "withdrawn")
        await h.sim.wait_until(
            lambda: h.recordings(h.call_row(cust.linkedid).id)[0].state == "discarded"
        )
        assert cust.mixmonitors and not any(m.active for m in cust.mixmonitors.values())
        await h.sim.wait_until(lambda: "ccwithdraw" not in cust.vars.get("DYNAMIC_FEATURES", "x"))
        h.sim.hangup(cust)
        await call_task

    run(tmp_path, scenario, policies=policies)


async def withdraw_while_agi_is_down(h: Harness, cust: SimChannel) -> Path:
    """The caller presses the withdraw key while callconsent's FastAGI is down: the shipped
    subroutine marks the channel and the spool, its AGI fails, and it stops the MixMonitor
    itself. Returns the spool mark."""
    await h.service.server.stop(grace=0.1)
    assert await h.sim.feature(cust, "9")
    assert cust.vars["AGISTATUS"] == "FAILURE"
    assert not any(m.active for m in cust.mixmonitors.values())  # stopped by the dialplan
    mark = h.app.spool.path / f"withdrawn-{cust.uid}"
    assert mark.is_file()
    return mark


@pytest.mark.parametrize(
    ("on_withdrawal", "late_write", "kept"),
    [
        ("stop_and_discard", False, False),
        ("stop", False, True),
        ("stop", True, False),  # audio written after the key: not kept
    ],
    ids=["discard", "keep", "keep-but-recorded-past"],
)
def test_a_withdrawal_and_hangup_while_the_daemon_was_down_are_acted_on_at_its_login(
    tmp_path: Path, on_withdrawal: str, late_write: bool, kept: bool
) -> None:
    """Key and hangup both while callconsent was down: the channel (and its variable) is
    gone, the spool mark is not. The restarted daemon's sweep withdraws the consent as of
    the mark's time, applies on_withdrawal before the call ends (so the finalizer never
    encrypts a discarded recording), and removes the mark."""
    policies = f'[policies.care]\nwithdraw_digit = "9"\non_withdrawal = "{on_withdrawal}"\n'

    async def scenario(h: Harness) -> None:
        cust, call_task = await call_then_daemon_restart(h, "care")
        mark = await withdraw_while_agi_is_down(h, cust)
        pressed = datetime.fromtimestamp(mark.stat().st_mtime, UTC)
        if late_write:  # a MixMonitor the subroutine did not stop: the file went on
            (rec,) = h.recordings(h.call_row(cust.linkedid).id)
            await asyncio.sleep(0.05)  # the header is written 1-15 ms after the stop
            later = pressed.timestamp() + 10
            os.utime(rec.spool_path, (later, later))
        h.sim.hangup(cust)
        await call_task
        h.service.adapter.on_ami_ready()  # the restarted daemon's login
        await h.sim.wait_until(lambda: h.call_row(cust.linkedid).ended_at is not None)
        row = h.call_row(cust.linkedid)
        assert row.consent_status == "withdrawn"
        _, change = h.evidence(row.id)
        assert (change.status, change.method) == ("withdrawn", "caller_withdrew_while_away")
        assert abs(change.decided_at - pressed) < timedelta(seconds=0.01)
        (rec,) = h.recordings(row.id)
        assert (rec.state != "discarded") is kept
        if not kept:
            assert rec.discard_reason == (
                "recorded_past_withdrawal" if late_write else "consent_withdrawn"
            )
            assert rec.id in h.sink.discarded
        assert not mark.exists()
        assert h.app.calls.find("asterisk", cust.linkedid) is None  # not held after the sweep

    run(tmp_path, scenario, policies=policies)


def test_a_withdraw_key_whose_agi_failed_is_acted_on_when_the_call_ends(tmp_path: Path) -> None:
    """callconsent up and holding the call, but the withdraw AGI failed (FastAGI down): the
    hangup consults the mark before the store ends the call."""
    policies = '[policies.care]\nwithdraw_digit = "9"\n'

    async def scenario(h: Harness) -> None:
        script = [press("1", "consent", 1.0), hangup("talk", 60.0)]
        call_task = asyncio.create_task(h.sim.inbound("care", script, agent_script=[]))
        await h.sim.wait_until(lambda: h.sim.customers() and customer(h).peer is not None)
        cust = customer(h)
        mark = await withdraw_while_agi_is_down(h, cust)
        assert h.call_row(cust.linkedid).consent_status == "granted"  # nobody heard it
        h.sim.hangup(cust)
        await call_task
        await h.settle()
        row = h.call_row(cust.linkedid)
        assert (row.consent_status, row.ended_at is not None) == ("withdrawn", True)
        (rec,) = h.recordings(row.id)
        assert (rec.state, rec.discard_reason) == ("discarded", "consent_withdrawn")
        assert not mark.exists()

    run(tmp_path, scenario, policies=policies)


def test_a_heard_withdrawal_leaves_no_mark_behind(tmp_path: Path) -> None:
    """The AGI heard the key: the call ends normally and its mark is removed with it."""
    policies = '[policies.care]\nwithdraw_digit = "9"\non_withdrawal = "stop"\n'

    async def scenario(h: Harness) -> None:
        script = [press("1", "consent", 1.0), press("9", "talk", 2.0), hangup("talk", 1.0)]
        call = await h.sim.inbound("care", script, agent_script=[])
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        assert row.consent_status == "withdrawn"
        assert [e.method for e in h.evidence(row.id)][1:] == ["caller_withdrew"]
        (rec,) = h.recordings(row.id)
        assert rec.state != "discarded"  # stop, stopped at the key by the daemon
        assert not list(h.app.spool.path.glob("withdrawn-*"))

    run(tmp_path, scenario, policies=policies)
