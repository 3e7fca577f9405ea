"""Agents, queues and supervisors against a real Asterisk (``CALLCONSENT_ASTERISK``):
``record_from = agent_answer`` through Queue and Dial, listen-in, the caller's withdraw key,
outbound campaigns, the periodic beep and the agent whisper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asterisk_real import Lab
from asterisk_real_harness import (
    PROMPT_HZ,
    WHISPER_HZ,
    Hz,
    Real,
    fields,
    go,
    lab_or_skip,
    phone_of,
    size,
    tone_seconds,
)

from agi.closure import header_final
from recorder.live.withdrawals import SpoolMarks
from recorder.store.models import Recording

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_or_skip()


def queue_of(lab: Lab) -> str:
    if lab.queue is None:
        pytest.skip(f"no Queue tests on this Asterisk: {lab.queue_missing}")
    return lab.queue


def answered_at(r: Real, customer_uid: str) -> float:
    """When the agent's leg answered: its state became Up (Dial's U() runs before Dial
    reports DialEnd, so that event is no measure)."""
    (dial,) = r.find_all("DialBegin", Uniqueid=customer_uid)
    up = r.find("Newstate", Uniqueid=dial["DestUniqueid"], ChannelStateDesc="Up")
    assert up is not None
    return float(up["Timestamp"])


async def wait_then_talk(r: Real, **variables: str) -> tuple[dict[str, str], Recording | None]:
    """A caller who accepts, then "speaks" the wait tone while the agent's phone rings (4 s),
    and speech once it answered; hung up 4 s after the agent answered. Returns the CCTest
    event and the call's one recording, if any."""
    token = await r.inbound("waittalk", __RING="4", **variables)
    started = await r.event("CCTest", token)
    await r.event("DialEnd", wait_s=30, Uniqueid=started["Uniqueid"], DialStatus="ANSWER")
    await asyncio.sleep(4)
    await r.hangup(started["Channel"])
    await r.finished(token)
    recs = r.recordings(r.call_of(started["Linkedid"]).id)
    assert len(recs) <= 1
    return started, (recs[0] if recs else None)


def assert_recorded_from_the_answer(r: Real, started: dict[str, str], rec: Recording) -> None:
    uid = started["Uniqueid"]
    (mixmon,) = r.find_all("MixMonitorStart", Uniqueid=uid)
    assert float(mixmon["Timestamp"]) >= answered_at(r, uid)
    assert rec.state == "closed" and header_final(Path(rec.spool_path))
    assert tone_seconds(rec.spool_path, Hz["wait"]) == 0.0  # the queue wait is not in the file
    assert tone_seconds(rec.spool_path, Hz["caller"]) >= 1.0  # but the conversation is
    assert tone_seconds(rec.spool_path, Hz["agent"]) >= 1.0


@pytest.mark.parametrize("record_from", ["agent_answer", "consent"])
def test_real_queue_records_from_the_agents_answer(
    lab: Lab, tmp_path: Path, record_from: str
) -> None:
    """The shipped Queue line: its gosub argument enables the codes on the member's leg, its
    AGI argument starts MixMonitor on the caller's leg once a member answered. The control run
    (record_from = consent) shows the wait tone is there to be found."""
    queue = queue_of(lab)
    policies = f'[policies.sales]\nrecord_from = "{record_from}"\n'

    async def scenario(r: Real) -> None:
        started, rec = await wait_then_talk(r, QUEUE=queue)
        assert started["Status"] == "granted" and rec is not None
        assert rec.id == started["Rec"] and started["Mixmon"] == ("" if later else rec.pbx_ref)
        member = r.find("AgentConnect", Uniqueid=started["Uniqueid"])
        assert member is not None and member["Queue"] == queue
        features = r.find_all("VarSet", Channel=member["DestChannel"], Variable="DYNAMIC_FEATURES")
        assert features and "tccstart" in features[-1]["Value"]  # the agent's codes, set by gosub
        if later:
            assert_recorded_from_the_answer(r, started, rec)
        else:
            assert tone_seconds(rec.spool_path, Hz["wait"]) >= 2.0

    later = record_from == "agent_answer"
    go(lab, tmp_path, scenario, policies=policies)


def test_real_dial_records_from_the_answer_with_the_system_user(lab: Lab, tmp_path: Path) -> None:
    """With Dial, the answer hook U() runs on the agent's leg: the recording of the customer's
    leg is started by the opt-in write=system user's AMI MixMonitor action."""
    policies = '[policies.sales]\nrecord_from = "agent_answer"\n'

    async def scenario(r: Real) -> None:
        started, rec = await wait_then_talk(r, AGENT="agent-ring")
        assert started["Status"] == "granted" and rec is not None and started["Mixmon"] == ""
        assert rec.pbx_ref and rec.pbx_channel == started["Uniqueid"]
        assert_recorded_from_the_answer(r, started, rec)

    go(lab, tmp_path, scenario, policies=policies, system=True)


def test_real_dial_without_the_system_user_records_nothing(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing rather than the queue wait: the agent's leg cannot start MixMonitor on the
    customer's, and the daemon says so."""
    policies = '[policies.sales]\nrecord_from = "agent_answer"\n'

    async def scenario(r: Real) -> None:
        started, rec = await wait_then_talk(r, AGENT="agent-ring")
        assert started["Status"] == "granted" and rec is None
        assert r.find_all("MixMonitorStart", Uniqueid=started["Uniqueid"]) == []

    go(lab, tmp_path, scenario, policies=policies)
    assert "agent_answer_recording_not_started" in caplog.text


CARE = '[policies.care]\nmonitoring_allowed = true\nwithdraw_digit = "9"\n'


async def bridged_call(r: Real, answer: str) -> tuple[str, dict[str, str]]:
    """A caller who answers ``answer`` and talks with an agent until the test hangs up."""
    token = await r.inbound("talk", campaign="care", AGENT="agent-ring", ANSWER=answer, __RING="0")
    started = fields(await r.event("CCTest", token))
    await r.event("BridgeEnter", wait_s=15, Uniqueid=started["Uniqueid"])
    return token, started


async def listen(r: Real, customer_uid: str) -> str:
    """A supervisor dials the shipped listen-in subroutine for ``customer_uid``."""
    return await r.originate(
        "Local/spy@cct-super/n", "cct-superphone", "listen", {"SPYTARGET": customer_uid}, "7000"
    )


def test_real_listen_in_follows_consent(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        token, started = await bridged_call(r, "1")
        uid = started["Uniqueid"]
        assert (started["Status"], started["Spygroup"]) == ("granted", "consented")
        spy_token = await listen(r, uid)
        spy = await r.event("ChanSpyStart", wait_s=10, SpyeeUniqueid=uid)
        await asyncio.sleep(1.5)
        assert r.find("CCSpyEnd", spy_token) is None  # still listening
        await r.hangup(started["Channel"])
        await r.finished(token)
        await r.event("CCSpyEnd", spy_token, wait_s=5)  # E: the listener leaves with the call
        assert r.find("ChanSpyStop", SpyerUniqueid=spy["SpyerUniqueid"]) is not None

        # the same supervisor line on a declined call: ChanSpy returns at once (S)
        token, started = await bridged_call(r, "2")
        uid = started["Uniqueid"]
        assert (started["Status"], started["Spygroup"]) == ("declined", "")
        spy_token = await listen(r, uid)
        await r.event("CCSpyEnd", spy_token, wait_s=5)
        assert r.find_all("ChanSpyStart", SpyeeUniqueid=uid) == []
        await r.hangup(started["Channel"])
        await r.finished(token)

    go(lab, tmp_path, scenario, policies=CARE)


@pytest.mark.parametrize("on_withdrawal", ["stop_and_discard", "stop"])
def test_real_withdrawal_cuts_the_listener_off_and_ends_the_recording(
    lab: Lab, tmp_path: Path, on_withdrawal: str
) -> None:
    policies = CARE + f'on_withdrawal = "{on_withdrawal}"\n'

    async def scenario(r: Real) -> None:
        token, started = await bridged_call(r, "1")
        uid = started["Uniqueid"]
        assert "ccwithdraw_9" in started["Features"]  # the caller's key, on the customer leg
        spy_token = await listen(r, uid)
        spy = await r.event("ChanSpyStart", wait_s=10, SpyeeUniqueid=uid)
        await r.press(phone_of(started["Channel"]), "9")
        await r.event("Hangup", wait_s=10, Uniqueid=spy["SpyerUniqueid"])  # the listener, cut off
        assert r.find("CCSpyEnd", spy_token) is None  # hung up, not returned from ChanSpy
        call = r.call_of(started["Linkedid"])
        await r.event("MixMonitorStop", wait_s=10, Uniqueid=uid)  # by our StopMixMonitor
        await r.until(lambda: r.recordings(call.id)[0].state != "recording", what="stopped")
        (rec,) = r.recordings(call.id)
        kept = size(rec.spool_path)
        if on_withdrawal == "stop":
            assert rec.state == "closed" and header_final(Path(rec.spool_path))
            assert r.sink.closed == [rec.id]  # kept: consent held while it was recorded
        else:
            assert (rec.state, rec.discard_reason) == ("discarded", "consent_withdrawn")
            assert r.sink.discarded == [rec.id]  # the finalizer destroys the audio
        again = await listen(r, uid)  # nobody may listen any more
        await r.event("CCSpyEnd", again, wait_s=5)
        assert len(r.find_all("ChanSpyStart", SpyeeUniqueid=uid)) == 1
        await asyncio.sleep(1.0)
        await r.hangup(started["Channel"])
        _, end = await r.finished(token)
        assert (end["Status"], end["Spygroup"]) == ("withdrawn", "")
        assert "ccwithdraw" not in end["Features"]
        assert [(e.status, e.method) for e in r.evidence(call.id)] == [
            ("granted", "prompt"),
            ("withdrawn", "caller_withdrew"),
        ]
        assert size(rec.spool_path) == kept  # nothing was recorded after the withdrawal
        assert [x.state for x in r.recordings(call.id)] == [rec.state]

    go(lab, tmp_path, scenario, policies=policies)


@pytest.mark.parametrize("on_withdrawal", ["stop_and_discard", "stop"])
def test_real_withdrawal_and_hangup_while_callconsent_is_down(
    lab: Lab, tmp_path: Path, on_withdrawal: str
) -> None:
    """The caller presses the withdraw key while callconsent's FastAGI is down, then hangs
    up before it is back. The shipped subroutine marks the spool with FILE() and, its AGI
    failed, stops the MixMonitor itself; callconsent's next login finds the call gone and
    the mark, and withdraws the consent as of the mark before it ends the call."""
    policies = CARE + f'on_withdrawal = "{on_withdrawal}"\n'

    async def scenario(r: Real) -> None:
        # the lab's dialplan is rendered with the lab's spool; each test records below it
        marks = SpoolMarks(r.lab.target.spool)
        r.app.calls.marks["asterisk"] = marks
        token, started = await bridged_call(r, "1")
        uid, linkedid = started["Uniqueid"], started["Linkedid"]
        call = r.call_of(linkedid)
        adapter = r.service.adapter
        await r.service.server.stop(grace=0.1)  # callconsent is down (its AMI stays, unheard)
        r.app.calls.forget("asterisk", linkedid)
        adapter.registry.drop(linkedid)
        await r.press(phone_of(started["Channel"]), "9")
        await r.event("MixMonitorStop", wait_s=10, Uniqueid=uid)  # by the subroutine
        mark = marks.path(uid)
        assert mark is not None
        await r.until(mark.exists, what="the spool mark")
        pressed = datetime.fromtimestamp(mark.stat().st_mtime, UTC)
        await asyncio.sleep(1.0)
        await r.hangup(started["Channel"])
        await r.finished(token)
        assert r.call_of(linkedid).consent_status == "granted"  # nobody heard it yet
        adapter.on_ami_ready()  # callconsent is back
        await r.until(lambda: r.call_of(linkedid).ended_at is not None, what="ended")
        assert r.call_of(linkedid).consent_status == "withdrawn"
        _, change = r.evidence(call.id)
        assert (change.status, change.method) == ("withdrawn", "caller_withdrew_while_away")
        assert abs(change.decided_at - pressed) < timedelta(seconds=0.01)
        (rec,) = r.recordings(call.id)
        assert header_final(Path(rec.spool_path))  # stopped and closed by Asterisk
        if on_withdrawal == "stop":  # ended at the key, within the slack: kept
            # the call is over and the file final: handed to the recorder at once
            await r.until(lambda: r.sink.closed == [rec.id], what="closed, handed on")
        else:
            assert (rec.state, rec.discard_reason) == ("discarded", "consent_withdrawn")
            assert r.sink.discarded == [rec.id]
        assert not mark.exists()

    go(lab, tmp_path, scenario, policies=policies)


async def outbound(r: Real, campaign: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """An agent dials out through the shipped outbound lines; returns the token, the CCTest
    event (on the agent's channel) and the customer leg's Newchannel event, once answered."""
    variables = {"CAMPAIGN": campaign, "AGENTNAME": "alice", "NUMBER": "030123456"}
    token = await r.originate(
        "Local/agent@cct-out/n", "cct-agentphone", "talk", variables, '"Alice" <7001>'
    )
    started = fields(await r.event("CCTest", token))
    dial = await r.event("DialBegin", wait_s=10, Uniqueid=started["Uniqueid"])
    await r.event("BridgeEnter", wait_s=15, Uniqueid=dial["DestUniqueid"])
    return token, started, fields(dial)


def test_real_outbound_always_announces_then_records(lab: Lab, tmp_path: Path) -> None:
    policies = '[policies.collections]\nmode = "always"\nlegal_basis = "legal_obligation"\n'

    async def scenario(r: Real) -> None:
        token, started, dial = await outbound(r, "collections")
        await asyncio.sleep(3)
        await r.hangup(started["Channel"])
        await r.finished(token)
        call = r.call_of(started["Linkedid"])
        assert (call.direction, call.agent) == ("outbound", "alice")
        (decision,) = r.evidence(call.id)
        assert (decision.status, decision.method) == ("not_required", "notice")
        (rec,) = r.recordings(call.id)
        assert rec.state == "closed" and rec.pbx_channel == dial["DestUniqueid"]  # customer leg
        assert tone_seconds(rec.spool_path, Hz["caller"]) >= 1.0
        assert tone_seconds(rec.spool_path, PROMPT_HZ) <= 0.2  # it starts after the notice

    go(lab, tmp_path, scenario, policies=policies)


def test_real_outbound_on_demand_the_agent_starts_pauses_and_stops(
    lab: Lab, tmp_path: Path
) -> None:
    policies = '[policies.support]\nmode = "on_demand"\n'

    async def scenario(r: Real) -> None:
        token, started, dial = await outbound(r, "support")
        customer = dial["DestUniqueid"]
        assert "tccstart" in started["Features"]  # the agent's codes, on the agent's channel
        call = r.call_of(started["Linkedid"])
        assert r.recordings(call.id) == []  # nothing until the agent starts it
        agent_phone = phone_of(started["Channel"])
        await r.press(agent_phone, "*41")
        await r.event("MixMonitorStart", wait_s=10, Uniqueid=customer)
        await asyncio.sleep(1.5)
        await r.press(agent_phone, "*42")
        await r.event("MixMonitorMute", wait_s=10, Uniqueid=customer, State="1")
        await asyncio.sleep(1.5)
        await r.press(agent_phone, "*43")
        await r.event("MixMonitorStop", wait_s=10, Uniqueid=customer)
        await asyncio.sleep(0.5)
        await r.hangup(started["Channel"])
        await r.finished(token)
        decision, change = r.evidence(call.id)
        assert (decision.status, decision.method) == ("not_required", "policy")
        assert (change.status, change.method, change.actor) == (
            "granted",
            "agent_attested",
            "alice",
        )
        (rec,) = r.recordings(call.id)
        assert rec.state == "closed" and rec.pbx_channel == customer
        assert header_final(Path(rec.spool_path))

    go(lab, tmp_path, scenario, policies=policies)


def test_real_outbound_never_refuses_the_start_code(lab: Lab, tmp_path: Path) -> None:
    policies = '[policies.quiet]\nmode = "never"\n'

    async def scenario(r: Real) -> None:
        token, started, dial = await outbound(r, "quiet")
        await r.press(phone_of(started["Channel"]), "*41")
        # refused: the agent hears a tone (AMI PlayDTMF on the agent's channel: the agent's
        # phone, the other half of the Local pair, receives it)
        phone = phone_of(started["Channel"])
        await r.event("DTMFEnd", wait_s=10, Channel=phone, Digit="#", Direction="Received")
        await r.hangup(started["Channel"])
        await r.finished(token)
        call = r.call_of(started["Linkedid"])
        assert r.recordings(call.id) == []
        assert r.find_all("MixMonitorStart", Uniqueid=dial["DestUniqueid"]) == []

    go(lab, tmp_path, scenario, policies=policies)


def test_real_whisper_tells_the_agent_only(lab: Lab, tmp_path: Path) -> None:
    """whisper = true: the agent's leg hears the consent status (a 1,200 Hz stand-in) when
    it answers, before the bridge; the customer's recording does not contain it."""
    policies = "[policies.sales]\nwhisper = true\n"

    async def scenario(r: Real) -> None:
        ear = r.scratch / "agent-ear.wav"
        token = await r.inbound("talk", AGENT="agent-ring", ANSWER="1", __RING="0", __EAR=str(ear))
        started = await r.event("CCTest", token)
        await r.event("BridgeEnter", wait_s=15, Uniqueid=started["Uniqueid"])
        await asyncio.sleep(3)
        await r.hangup(started["Channel"])
        await r.finished(token)
        (rec,) = r.recordings(r.call_of(started["Linkedid"]).id)
        assert tone_seconds(ear, WHISPER_HZ) >= 0.5  # the agent heard the status
        assert tone_seconds(rec.spool_path, WHISPER_HZ) == 0.0  # the customer did not
        assert tone_seconds(rec.spool_path, Hz["agent"]) >= 1.0

    go(lab, tmp_path, scenario, policies=policies)


def test_real_periodic_beep(lab: Lab, tmp_path: Path) -> None:
    """beep_interval_s: MixMonitor takes B(n) and the caller hears the test's own ``beep``
    every n seconds; the beep is a whisper, mixed in after MixMonitor took its copy, so it is
    not in the file. The recording starts once the consent dialogue is over: a whisper stalls
    the prompts of its channel on Asterisk 22.11 (``tests/fixtures/asterisk-real/*-r3_*``).

    The caller holds with a sound, as a queue's music on hold: before 22.11 a whisper into a
    channel that carries no audio is never heard (22.11's "Allow whisper audiohooks to work
    without an underlying stream"; dialplan/asterisk/README.md), so on 22.10 a caller left in
    ``Wait()`` silence hears no beep unless asterisk.conf has ``transmit_silence = yes``."""

    async def scenario(r: Real) -> None:
        ear = r.scratch / "caller-ear.wav"
        token = await r.inbound(
            "talk", ANSWER="1", HOLD="60", HOLDSOUND="cct-wait-tone", PHONE_EAR=str(ear)
        )
        started = await r.event("CCTest", token)
        uid = started["Uniqueid"]
        (digit,) = r.find_all("DTMFEnd", Uniqueid=uid, Digit="1")
        assert float(started["Timestamp"]) - float(digit["Timestamp"]) < 3.0  # thanks: 1 s
        (mixmon,) = r.find_all("MixMonitorStart", Uniqueid=uid)
        (exec_,) = [
            e for e in r.find_all("AGIExecStart", Uniqueid=uid) if "MixMonitor" in e["Command"]
        ]
        assert "B(2)" in exec_["Command"]
        await asyncio.sleep(7)
        await r.hangup(started["Channel"])
        await r.finished(token)
        hung = r.find("Hangup", Uniqueid=uid)
        assert hung is not None
        recorded_s = float(hung["Timestamp"]) - float(mixmon["Timestamp"])
        (rec,) = r.recordings(r.call_of(started["Linkedid"]).id)
        assert rec.state == "closed" and header_final(Path(rec.spool_path))
        assert tone_seconds(rec.spool_path, Hz["caller"]) >= recorded_s - 1.0  # it went on
        assert tone_seconds(rec.spool_path, PROMPT_HZ) == 0.0  # started after the thanks
        assert tone_seconds(rec.spool_path, Hz["beep"]) == 0.0
        hooks = [m for m in r.find_all("ChanSpyStart") if m.get("SpyeeUniqueid") == uid]
        assert len(hooks) >= 3  # func_periodic_hook's ChanSpy, every 2 s
        # the caller heard them: 0.25 s each; a loaded host clips some (0.45 s of 3 measured),
        # so ask for most of one, the hooks above prove they repeat
        assert tone_seconds(ear, Hz["beep"]) >= 0.2

    go(lab, tmp_path, scenario, policies="[policies.sales]\nbeep_interval_s = 2\n")
