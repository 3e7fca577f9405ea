"""Example-based tests of the consent machine: one test per rule a reader would look for."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

import consent_ivr as c


def make_call(policy: c.Policy | None = None, **kw) -> c.ConsentCall:
    ids = (f"id-{n}" for n in itertools.count())
    ticks = (
        datetime(2026, 11, 24, 9, 0, tzinfo=UTC) + timedelta(seconds=n) for n in itertools.count()
    )
    return c.ConsentCall(
        policy or c.Policy(), new_id=lambda: next(ids), clock=lambda: next(ticks), **kw
    )


def kinds(actions: list) -> list[str]:
    return [type(a).__name__ for a in actions]


def only(actions: list, cls: type):
    found = [a for a in actions if isinstance(a, cls)]
    assert len(found) == 1, actions
    return found[0]


def test_accept_during_prompt_logs_then_records_then_thanks() -> None:
    call = make_call()
    play = only(call.handle(c.CallAnswered()), c.PlayPrompt)
    assert (play.prompt_id, play.barge_in) == ("consent", "12")
    actions = call.handle(c.DigitReceived("1"))
    assert kinds(actions) == ["LogConsent", "StartRecording", "SetVariables", "PlayPrompt"]
    ev = actions[0].evidence
    assert ev.decision is c.ConsentStatus.GRANTED and ev.method == "prompt"
    assert [(d.digit, d.attempt, d.valid) for d in ev.digits] == [("1", 1, True)]
    assert ev.prompts[0].outcome == "interrupted"
    variables = actions[2].variables  # after the start: the evidence is stored already
    assert variables["CONSENT_STATUS"] == "granted"
    assert variables["CONSENT_RECORDING_ID"] == actions[1].recording_id
    assert actions[3].prompt_id == "thanks"
    assert kinds(call.handle(c.PromptFinished("thanks"))) == ["Continue"]
    assert call.phase is c.Phase.CONNECTED


def test_decline_is_not_hung_up_and_not_recorded() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    actions = call.handle(c.DigitReceived("2"))
    assert kinds(actions) == ["LogConsent", "SetVariables", "PlayPrompt"]
    assert actions[1].variables == {
        "CONSENT_STATUS": "declined",
        "CONSENT_ID": call.consent_id,
        "CONSENT_RECORDING_ID": "",
    }
    assert actions[2].prompt_id == "declined"
    assert kinds(call.handle(c.PromptFinished("declined"))) == ["Continue"]
    assert call.recordings == {}


def test_digit_after_prompt_and_retry_then_silence_is_no_input() -> None:
    call = make_call(c.Policy(max_attempts=2, digit_timeout_ms=3000))
    call.handle(c.CallAnswered())
    assert call.handle(c.PromptFinished("consent")) == [c.CollectDigit(3000, "12")]
    again = call.handle(c.InputTimedOut())
    assert only(again, c.PlayPrompt).prompt_id == "consent"
    call.handle(c.PromptFinished("consent"))
    actions = call.handle(c.InputTimedOut())
    ev = only(actions, c.LogConsent).evidence
    assert ev.decision is c.ConsentStatus.NO_INPUT and ev.attempts == 2
    assert only(actions, c.PlayPrompt).prompt_id == "no_input"
    assert not any(isinstance(a, c.StartRecording) for a in actions)


def test_invalid_digit_uses_an_attempt() -> None:
    call = make_call(c.Policy(max_attempts=2))
    call.handle(c.CallAnswered())
    call.handle(c.PromptFinished("consent"))
    assert only(call.handle(c.DigitReceived("7")), c.PlayPrompt).prompt_id == "consent"
    actions = call.handle(c.DigitReceived("1"))
    ev = only(actions, c.LogConsent).evidence
    assert [(d.digit, d.attempt, d.valid) for d in ev.digits] == [("7", 1, False), ("1", 2, True)]


def test_hangup_during_prompt_is_one_no_input_decision() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    ev = only(call.handle(c.HungUp()), c.LogConsent).evidence
    assert (ev.decision, ev.method) == (c.ConsentStatus.NO_INPUT, "hangup")
    assert ev.prompts[-1].outcome == "hangup"
    with pytest.raises(c.IllegalTransition):
        call.handle(c.HungUp())


def test_missing_prompt_means_unavailable_and_unrecorded() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    actions = call.handle(c.PromptFailed("consent", "no such file"))
    assert only(actions, c.LogConsent).evidence.decision is c.ConsentStatus.UNAVAILABLE
    assert kinds(actions)[-1] == "Continue"
    assert call.recordings == {}


def test_record_from_agent_answer_reserves_and_starts_on_answer() -> None:
    call = make_call(c.Policy(record_from="agent_answer"))
    call.handle(c.CallAnswered())
    actions = call.handle(c.DigitReceived("1"))
    rid = only(actions, c.SetVariables).variables["CONSENT_RECORDING_ID"]
    assert not any(isinstance(a, c.StartRecording) for a in actions)
    call.handle(c.PromptFinished("thanks"))
    assert call.handle(c.AgentAnswered("7001")) == [c.StartRecording(rid)]
    assert call.handle(c.AgentAnswered("7002")) == []


def test_agent_pause_resume_stop_and_restart() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    rid = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.RecordingStarted(rid))
    call.handle(c.PromptFinished("thanks"))
    assert call.handle(c.AgentCommand("pause")) == [c.PauseRecording(rid)]
    assert kinds(call.handle(c.AgentCommand("pause"))) == ["RejectCommand"]
    assert call.handle(c.AgentCommand("resume")) == [c.ResumeRecording(rid)]
    assert call.handle(c.AgentCommand("stop")) == [c.StopRecording(rid)]
    call.handle(c.RecordingStopped(rid))
    again = call.handle(c.AgentCommand("start"))
    new = only(again, c.StartRecording).recording_id
    assert new != rid
    assert call.recordings == {rid: c.RecordingState.STOPPED, new: c.RecordingState.REQUESTED}


def test_agent_discard_destroys_every_recording_and_blocks_start() -> None:
    call = make_call(c.Policy(monitoring_allowed=True))
    call.handle(c.CallAnswered())
    first = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.PromptFinished("thanks"))
    call.handle(c.RecordingStarted(first))
    call.handle(c.AgentCommand("stop"))
    call.handle(c.RecordingStopped(first))
    second = only(call.handle(c.AgentCommand("start")), c.StartRecording).recording_id
    call.handle(c.RecordingStarted(second))
    actions = call.handle(c.AgentCommand("discard", agent="7001"))
    assert kinds(actions) == [
        "LogStatusChange",
        "SetVariables",
        "StopMonitoring",
        "StopRecording",
        "DiscardRecording",
        "DiscardRecording",
    ]
    assert {a.recording_id for a in actions if isinstance(a, c.DiscardRecording)} == {first, second}
    assert actions[0].actor == "7001" and actions[0].cause == "agent_discard"
    refused = only(call.handle(c.AgentCommand("start")), c.RejectCommand)
    assert "declined" in refused.reason


def test_withdrawal_stop_keeps_what_was_recorded() -> None:
    call = make_call(c.Policy(withdraw_digit="5", on_withdrawal="stop"))
    call.handle(c.CallAnswered())
    rid = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.PromptFinished("thanks"))
    call.handle(c.RecordingStarted(rid))
    assert call.handle(c.DigitReceived("3")) == []
    actions = call.handle(c.DigitReceived("5"))
    assert kinds(actions) == ["LogStatusChange", "SetVariables", "StopRecording"]
    assert call.status is c.ConsentStatus.WITHDRAWN


def test_withdrawal_default_discards() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    rid = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.PromptFinished("thanks"))
    actions = call.handle(c.CallerWithdrew())
    assert c.DiscardRecording(rid, "consent_withdrawn") in actions


def test_notice_for_contract_basis_records_without_asking() -> None:
    call = make_call(c.Policy(legal_basis="contract"))
    assert call.handle(c.CallAnswered()) == [c.PlayPrompt("notice", "en", "")]
    actions = call.handle(c.PromptFinished("notice"))
    assert only(actions, c.LogConsent).evidence.decision is c.ConsentStatus.NOT_REQUIRED
    assert kinds(actions) == ["LogConsent", "StartRecording", "SetVariables", "Continue"]


def test_objection_under_legitimate_interest_declines() -> None:
    call = make_call(c.Policy.from_mapping("li", {"legal_basis": "legitimate_interest"}))
    assert call.handle(c.CallAnswered()) == [c.PlayPrompt("notice", "en", "2")]
    actions = call.handle(c.DigitReceived("2"))
    assert only(actions, c.LogConsent).evidence.method == "notice"
    assert call.status is c.ConsentStatus.DECLINED


def test_on_demand_start_is_agent_attested_consent() -> None:
    call = make_call(c.Policy(mode="on_demand"))
    actions = call.handle(c.CallAnswered())
    assert kinds(actions) == ["LogConsent", "SetVariables", "Continue"]
    assert call.status is c.ConsentStatus.NOT_REQUIRED
    started = call.handle(c.AgentCommand("start", agent="7001"))
    change = only(started, c.LogStatusChange)
    assert (change.status, change.cause, change.actor) == (
        c.ConsentStatus.GRANTED,
        "agent_attested",
        "7001",
    )
    assert any(isinstance(a, c.StartRecording) for a in started)


def test_never_mode_refuses_agent_start() -> None:
    call = make_call(c.Policy(mode="never"))
    call.handle(c.CallAnswered())
    assert "never" in only(call.handle(c.AgentCommand("start")), c.RejectCommand).reason


def test_language_fallback() -> None:
    p = c.Policy(language="en")
    assert p.resolve_language("de_DE", ["en", "de"]) == "de"
    assert p.resolve_language("fr", ["en", "de"]) == "en"
    assert p.resolve_language(None, ["en"]) == "en"
    assert make_call(p, channel_language="de", available_languages=["de"]).language == "de"


def test_hangup_while_recording_stops_without_a_stop_command() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    rid = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.RecordingStarted(rid))
    assert call.handle(c.HungUp()) == []  # the PBX closes the file; we never send a stop
    assert call.recordings == {rid: c.RecordingState.STOPPED}
    assert call.handle(c.RecordingStopped(rid)) == []  # a late RECORD_STOP is fine
    assert "ended" in only(call.handle(c.AgentCommand("start")), c.RejectCommand).reason


def test_snapshot_restores_a_decided_call() -> None:
    call = make_call()
    call.handle(c.CallAnswered())
    rid = only(call.handle(c.DigitReceived("1")), c.StartRecording).recording_id
    call.handle(c.RecordingStarted(rid))
    call.handle(c.PromptFinished("thanks"))
    again = c.ConsentCall.restore(c.Policy(), call.snapshot())
    assert again.handle(c.AgentCommand("pause")) == [c.PauseRecording(rid)]


def test_events_are_frozen_and_validated() -> None:
    with pytest.raises(ValueError):
        c.DigitReceived("x")
    with pytest.raises(ValueError):
        c.AgentCommand("explode")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        c.DigitReceived("1").digit = "2"  # type: ignore[misc]


def test_illegal_transition_names_phase_and_event() -> None:
    call = make_call()
    with pytest.raises(c.IllegalTransition, match="InputTimedOut is not allowed in phase ready"):
        call.handle(c.InputTimedOut())
