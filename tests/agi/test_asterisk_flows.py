"""Consent calls end to end through the simulated Asterisk, over real sockets: our FastAGI
server and AMI client against the simulator running our rendered dialplan. Each flow checks
the channel variables, the evidence rows, and exactly the recordings the policy allows."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest
from asterisk_flows import run, sha256
from asterisk_harness import SYSTEM_USER, Harness
from asterisk_sim import hangup, press

from agi.closure import header_final
from recorder.store.models import Call


def test_accept_records_after_the_digit_and_closes_the_file_at_hangup(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1", "consent", 1.2), hangup("talk", 2.0)])
        await h.settle()
        cust = call.customer
        assert call.gosub_retval == "granted"
        assert cust.vars["AGISTATUS"] == "SUCCESS"
        assert cust.inherit["CONSENT_STATUS"] == 2  # __CONSENT_STATUS: the agent leg gets it
        assert cust.heard == ["consent", "thanks"]
        row = h.call_row(cust.linkedid)  # the call key is CHANNEL(linkedid), not the uniqueid
        assert (row.consent_status, row.campaign, row.number_kind) == ("granted", "sales", "e164")
        assert row.ended_at is not None
        (decision,) = h.evidence(row.id)
        assert (decision.kind, decision.status, decision.method) == (
            "decision",
            "granted",
            "prompt",
        )
        assert decision.id == cust.vars["CONSENT_ID"]
        assert [d["digit"] for d in decision.digits] == ["1"]
        assert decision.prompt_sha256 == sha256(h.app.config.prompt_dir / "en" / "consent.wav")
        assert decision.pbx_channel_id == cust.uid
        (rec,) = h.recordings(row.id)
        assert rec.id == cust.vars["CONSENT_RECORDING_ID"]
        assert rec.state == "closed" and rec.pbx_ref == cust.vars["MIXMON_ID"]
        assert Path(rec.spool_path) == h.app.spool.path / f"{rec.id}.wav"
        assert header_final(Path(rec.spool_path))
        with wave.open(rec.spool_path) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 8000, 2)
            assert w.getnframes() > 0
        assert h.sink.closed == [rec.id]
        assert h.audit_actions() == [
            "call.opened",
            "consent.decision",
            "recording.started",
            "recording.closed",
        ]
        assert h.app.calls.find("asterisk", cust.linkedid) is None  # forgotten once over

    run(tmp_path, scenario)


def test_decline_records_nothing_and_the_call_goes_on(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("2", "consent", 1.0), hangup("talk", 1.0)])
        await h.settle()
        cust = call.customer
        assert call.gosub_retval == "declined"
        assert cust.heard == ["consent", "declined"]
        assert cust.vars["CONSENT_RECORDING_ID"] == ""
        assert not h.sim.exec_log  # no MixMonitor was ever asked for
        row = h.call_row(cust.linkedid)
        assert h.evidence(row.id)[0].status == "declined"
        assert h.recordings(row.id) == []
        assert list(h.app.spool.path.iterdir()) == []

    run(tmp_path, scenario)


def test_silence_is_no_consent(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [hangup("talk", 1.0)])
        await h.settle()
        cust = call.customer
        assert call.gosub_retval == "no_input"
        assert cust.heard == ["consent", "consent", "no_input"]  # asked twice (max_attempts)
        row = h.call_row(cust.linkedid)
        (decision,) = h.evidence(row.id)
        assert (decision.status, decision.attempts) == ("no_input", 2)
        assert h.recordings(row.id) == []

    run(tmp_path, scenario)


def test_hangup_during_the_prompt(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [hangup("consent", 0.5)])
        await h.settle()
        cust = call.customer
        assert cust.destroyed  # our server closed the socket, so Asterisk could end the call
        assert cust.vars["AGISTATUS"] == "HANGUP"
        row = h.call_row(cust.linkedid)
        (decision,) = h.evidence(row.id)
        assert (decision.status, decision.method) == ("no_input", "hangup")
        assert decision.prompts[0]["outcome"] == "hangup"
        assert h.recordings(row.id) == []
        assert row.ended_at is not None
        assert h.sim.exec_log == []

    run(tmp_path, scenario)


def test_hangup_while_recording_closes_the_recording_once_its_header_is_final(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        # accept, then hang up during the thanks prompt: the AGI is still running
        call = await h.sim.inbound("sales", [press("1", "consent", 1.0), hangup("thanks", 1.0)])
        await h.settle()
        cust = call.customer
        row = h.call_row(cust.linkedid)
        assert row.consent_status == "granted" and row.ended_at is not None
        (rec,) = h.recordings(row.id)
        assert rec.state == "closed"
        assert header_final(Path(rec.spool_path))
        assert h.sink.closed == [rec.id]
        assert h.service.adapter.registry.get(cust.linkedid) is None

    run(tmp_path, scenario)


def test_service_down_means_unavailable_and_the_call_goes_on(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.service.server.stop()  # nothing listens any more: AGISTATUS=FAILURE
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 0.5)])
        assert call.customer.vars["AGISTATUS"] == "FAILURE"
        assert call.gosub_retval == "unavailable"
        assert call.customer.vars["CONSENT_STATUS"] == "unavailable"
        assert h.rows(Call) == []
        assert h.sim.exec_log == []

    run(tmp_path, scenario)


def test_a_session_that_ends_undecided_is_unavailable_too(tmp_path: Path) -> None:
    """s4b: a server that closes without a command gives AGISTATUS=SUCCESS and nothing set."""

    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("no/such campaign", [hangup("talk", 0.5)])
        assert call.customer.vars["AGISTATUS"] == "SUCCESS"
        assert call.gosub_retval == "unavailable"

    run(tmp_path, scenario)


def test_agent_feature_codes_pause_resume_stop_start_and_discard(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        agent_script = [
            press("*42", "talk", 1.0),  # pause (card data)
            press("*42", "talk", 1.0),  # resume
            press("*43", "talk", 1.0),  # stop
            press("*41", "talk", 1.0),  # start again (a peer feature: runs on the customer leg)
            press("*49", "talk", 1.0),  # the customer said no: stop and destroy everything
            press("*41", "talk", 1.0),  # refused now
        ]
        # no hangup act: the customer hangs up once the agent's last code has run
        cust_script = [press("1", "consent", 1.0), press("*41", "talk", 0.5)]
        call = await h.sim.inbound("sales", cust_script, agent_script=agent_script)
        await h.settle()
        cust, agent = call.customer, call.agent
        assert agent is not None
        # the codes are enabled on the agent leg only, never on the customer leg
        assert agent.vars["DYNAMIC_FEATURES"] == "ccstart#ccpause#ccstop#ccdiscard"
        assert "DYNAMIC_FEATURES" not in cust.vars
        assert ("dtmf", "*41") in cust.events  # the customer pressing *41 triggers nothing
        row = h.call_row(cust.linkedid)
        first, second = h.recordings(row.id)
        # pause/resume: MixMonitorMute on the customer leg, with the MixMonitorID
        mutes = [e for e in cust.events if e[0] == "MixMonitorMute"]
        assert mutes == [
            ("MixMonitorMute", first.pbx_ref, "1"),
            ("MixMonitorMute", first.pbx_ref, "0"),
        ]
        assert cust.stopped_without_id == 0  # never "every MixMonitor on the channel"
        assert first.state == second.state == "discarded"
        assert {first.discard_reason, second.discard_reason} == {"agent_discard"}
        changes = [e for e in h.evidence(row.id) if e.kind == "change"]
        assert [(e.status, e.method) for e in changes] == [("declined", "agent_discard")]
        assert changes[0].actor == "Local/agent-7001@cc-agents"
        assert cust.vars["CONSENT_STATUS"] == "declined"  # set on the customer leg by AMI
        assert sorted(h.sink.discarded) == sorted([first.id, second.id])
        assert agent.heard.count("agent-done") == 4  # pause, resume, stop, discard
        assert agent.heard_dtmf == ["#"]  # the refused start: a tone for the agent
        started_in_call = [e for e in h.sim.exec_log if e[1] == "MixMonitor"]
        assert [e[0] for e in started_in_call] == [cust.name, cust.name]

    run(tmp_path, scenario)


def test_record_from_agent_answer_with_dial_needs_the_system_user(tmp_path: Path) -> None:
    policies = '[policies.sales]\nrecord_from = "agent_answer"\n'

    async def without(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 1.0)], agent_script=[])
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        assert row.consent_status == "granted"
        assert h.recordings(row.id) == []  # nothing recorded rather than the queue wait

    async def with_system(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 2.0)], agent_script=[])
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        (rec,) = h.recordings(row.id)
        assert rec.state == "closed"
        assert h.sim.exec_log == []  # started by the AMI MixMonitor action, not in the call

    run(tmp_path / "a", without, policies=policies)
    run(tmp_path / "b", with_system, policies=policies, system_user=SYSTEM_USER)


def test_record_from_agent_answer_with_queue_starts_on_the_customer_leg(tmp_path: Path) -> None:
    """Queue's AGI argument runs on the caller's leg once a member answered: MixMonitor starts
    there, in the call, without the write=system user; the queue wait is not recorded."""

    async def scenario(h: Harness) -> None:
        url = f"agi://127.0.0.1:{h.service.server.port}/answer"
        task = asyncio.create_task(h.sim.inbound("sales", [press("1"), hangup("talk", 30.0)]))
        await h.sim.wait_until(h.sim.consent_asked)
        cust = h.sim.customers()[-1]
        row = h.call_row(cust.linkedid)
        assert row.consent_status == "granted" and h.recordings(row.id) == []  # still queued
        assert cust.vars["CONSENT_RECORDING_ID"]  # reserved for the agent's answer
        assert await h.sim.run_agi(cust, url) == "SUCCESS"  # a member answered
        (rec,) = h.recordings(row.id)
        assert rec.id == cust.vars["CONSENT_RECORDING_ID"]
        assert [e[0] for e in h.sim.exec_log] == [cust.name]
        h.sim.hangup(cust)
        await task
        await h.settle()
        assert h.recordings(row.id)[0].state == "closed"

    run(tmp_path, scenario, policies='[policies.sales]\nrecord_from = "agent_answer"\n')


def test_a_periodic_beep_is_asked_of_mixmonitor(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.sim.inbound("sales", [press("1"), hangup("talk", 0.5)])
        assert h.sim.exec_log[0][2].endswith(",i(MIXMON_ID)B(15)")

    run(tmp_path, scenario, policies="[policies.sales]\nbeep_interval_s = 15\n")


def test_a_beeping_recording_starts_after_the_thanks_prompt(tmp_path: Path) -> None:
    """A ChanSpy whisper stalls the prompt it plays over (real Asterisk 22.11), so a beeping
    recording is registered on the accept digit and MixMonitor runs after the last prompt."""

    async def scenario(h: Harness) -> None:
        await h.sim.inbound("sales", [press("1"), hangup("talk", 0.5)])
        (cust,) = h.sim.customers()
        played = [p for p in cust.heard if "thanks" in p]
        assert played and h.sim.exec_log[0][2].endswith("B(15)")
        row = h.call_row(cust.linkedid)
        await h.settle()
        assert [r.state for r in h.recordings(row.id)] == ["closed"]

    run(tmp_path, scenario, policies="[policies.sales]\nbeep_interval_s = 15\n")


def test_a_beeping_recording_whose_call_ends_in_the_thanks_prompt_never_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        await h.sim.inbound("sales", [press("1"), hangup("thanks", 0.2)])
        (cust,) = h.sim.customers()
        await h.settle()
        assert h.sim.exec_log == []  # no MixMonitor ran
        row = h.call_row(cust.linkedid)
        assert row.consent_status == "granted"
        (rec,) = h.recordings(row.id)
        assert (rec.state, rec.discard_reason) == ("discarded", "call_ended_before_start")

    with caplog.at_level("INFO"):
        run(tmp_path, scenario, policies="[policies.sales]\nbeep_interval_s = 15\n")
    assert "recording_file_missing" not in caplog.text
    assert "recording_never_started" in caplog.text
