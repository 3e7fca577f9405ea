"""Property tests of the consent rules: for any policy and any sequence of events.

The three invariants of the issue, checked after every event of random sequences:
(a) no StartRecording on a call that asks for consent before the caller's accept digit;
(b) decline, withdrawal (stop_and_discard) or agent discard yields DiscardRecording for
    everything recorded, and nothing is recorded after it;
(c) a call that ends has exactly one final consent decision (one LogConsent), logged before
    any recording starts.

The ``Mutant*`` machines at the bottom break one rule each; the tests prove that the property
checks catch every one of them, so the checks can fail.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consent_ivr as c
from consent_ivr.machine import TRANSITIONS, RecordingState

POLICY_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["consent", "always", "never", "on_demand"]),
        "legal_basis": st.sampled_from(
            ["consent", "contract", "legal_obligation", "legitimate_interest"]
        ),
        "accept_digit": st.sampled_from(["1", "9", "*"]),
        "decline_digit": st.sampled_from(["2", "0", "#"]),
        "max_attempts": st.integers(1, 3),
        "record_from": st.sampled_from(["consent", "agent_answer"]),
        "on_withdrawal": st.sampled_from(["stop", "stop_and_discard"]),
        "withdraw_digit": st.sampled_from(["", "5", "1"]),
        "monitoring_allowed": st.booleans(),
        "announce": st.booleans(),
        "silence_outcome": st.sampled_from(["decline", "accept"]),
    },
)


@st.composite
def policies(draw: st.DrawFn) -> c.Policy:
    data = draw(POLICY_SETTINGS)
    try:
        return c.Policy.from_mapping("prop", data)
    except c.PolicyError:
        # invalid combinations are refused at config time; use the nearest valid policy
        data.pop("silence_outcome", None)
        if data.get("mode") == "always" and data.get("legal_basis", "consent") == "consent":
            data["legal_basis"] = "contract"
        return c.Policy.from_mapping("prop", data)


EVENT_KINDS = [
    "answered",
    "prompt_finished",
    "prompt_failed",
    "digit",
    "timeout",
    "agent_answered",
    "rec_started",
    "rec_stopped",
    "agent",
    "withdrew",
    "hungup",
]


@dataclass
class Trace:
    """Everything the checks need to know about one run."""

    policy: c.Policy
    started: list[str] = field(default_factory=list)
    discarded: set[str] = field(default_factory=set)
    log_consents: int = 0
    accepted_by_caller: bool = False
    discard_trigger: str | None = None
    ended: bool = False
    continues: int = 0


KIND_OF = {
    c.CallAnswered: "answered",
    c.PromptFinished: "prompt_finished",
    c.PromptFailed: "prompt_failed",
    c.DigitReceived: "digit",
    c.InputTimedOut: "timeout",
    c.AgentAnswered: "agent_answered",
    c.RecordingStarted: "rec_started",
    c.RecordingStopped: "rec_stopped",
    c.AgentCommand: "agent",
    c.CallerWithdrew: "withdrew",
    c.HungUp: "hungup",
}


def draw_event(data: st.DataObject, trace: Trace, phase: c.Phase) -> c.Event:
    # Half the time an event the phase accepts (to reach deep states), else any event at all
    # (to check that refused events change nothing).
    legal = sorted({KIND_OF[e] for (ph, e) in TRANSITIONS if ph is phase})
    kinds = legal if legal and data.draw(st.booleans()) else EVENT_KINDS
    kind = data.draw(st.sampled_from(kinds))
    if kind == "answered":
        return c.CallAnswered()
    if kind == "prompt_finished":
        return c.PromptFinished(data.draw(st.sampled_from(["consent", "notice", "thanks"])))
    if kind == "prompt_failed":
        return c.PromptFailed("consent", "missing file")
    if kind == "digit":
        p = trace.policy
        favoured = [p.accept_digit, p.decline_digit, p.withdraw_digit or p.accept_digit]
        return c.DigitReceived(data.draw(st.sampled_from(favoured + list("0123456789*#"))))
    if kind == "timeout":
        return c.InputTimedOut()
    if kind == "agent_answered":
        return c.AgentAnswered("agent-7")
    if kind in ("rec_started", "rec_stopped"):
        ids = [*trace.started, "not-a-recording"]
        rid = data.draw(st.sampled_from(ids))
        return c.RecordingStarted(rid) if kind == "rec_started" else c.RecordingStopped(rid)
    if kind == "agent":
        return c.AgentCommand(data.draw(st.sampled_from(list(c.events.AGENT_VERBS))), "agent-7")
    if kind == "withdrew":
        return c.CallerWithdrew()
    return c.HungUp()


def state_of(call: c.ConsentCall) -> tuple:
    return (call.phase, call.status, dict(call.recordings), call.decided)


def run_and_check(machine_cls: type[c.ConsentCall], policy: c.Policy, data: st.DataObject) -> None:
    ids = (f"id-{n}" for n in itertools.count())
    call = machine_cls(policy, new_id=lambda: next(ids))
    trace = Trace(policy)
    steps = data.draw(st.integers(1, 40))
    for _ in range(steps):
        event = draw_event(data, trace, call.phase)
        before = state_of(call)
        phase_before = call.phase
        try:
            actions = call.handle(event)
        except c.IllegalTransition:
            assert state_of(call) == before, "a refused event changed the call"
            continue
        if (
            isinstance(event, c.DigitReceived)
            and event.digit == policy.accept_digit
            and phase_before in (c.Phase.ASKING, c.Phase.WAITING)
        ):
            trace.accepted_by_caller = True
        check_actions(trace, event, phase_before, actions)
        if isinstance(event, c.HungUp):
            trace.ended = True
            # (c) a call that ends has exactly one final decision
            assert trace.log_consents == 1, f"call ended with {trace.log_consents} decisions"
    if trace.discard_trigger is not None:
        # (b) everything recorded was discarded
        missing = set(trace.started) - trace.discarded
        assert not missing, f"after {trace.discard_trigger}, recordings {missing} were kept"
        assert all(s is RecordingState.DISCARDED for s in call.recordings.values()), (
            f"after {trace.discard_trigger}: {call.recordings}"
        )


def check_actions(trace: Trace, event: c.Event, phase_before: c.Phase, actions: list) -> None:
    p = trace.policy
    for action in actions:
        if isinstance(action, c.LogConsent):
            trace.log_consents += 1
            assert trace.log_consents == 1, "a second consent decision was logged"
        elif isinstance(action, c.StartRecording):
            # (c) the decision is logged before anything is recorded
            assert trace.log_consents == 1, "recording started before the decision was logged"
            # (a) no recording on a consent call before the accept digit
            if p.asks_consent:
                assert trace.accepted_by_caller, f"StartRecording before the accept digit ({event})"
            # (b) nothing is recorded after a decline, withdrawal or discard
            assert trace.discard_trigger is None, f"recording started after {trace.discard_trigger}"
            trace.started.append(action.recording_id)
        elif isinstance(action, c.DiscardRecording):
            trace.discarded.add(action.recording_id)
        elif isinstance(action, c.Continue):
            trace.continues += 1
            assert trace.continues == 1, "the call was handed back twice"
    refused = any(isinstance(a, c.RejectCommand) for a in actions)
    if isinstance(event, c.AgentCommand) and event.verb == "discard" and not refused:
        trace.discard_trigger = trace.discard_trigger or "agent discard"
    withdrew = any(
        isinstance(a, c.LogStatusChange) and a.status is c.ConsentStatus.WITHDRAWN for a in actions
    )
    if withdrew and p.on_withdrawal is c.OnWithdrawal.STOP_AND_DISCARD:
        trace.discard_trigger = trace.discard_trigger or "withdrawal"
    if withdrew and p.on_withdrawal is c.OnWithdrawal.STOP:
        # the kept part stops; nothing runs any more
        assert not any(isinstance(a, c.StartRecording) for a in actions)
    declined = any(
        isinstance(a, c.LogConsent) and a.evidence.decision is c.ConsentStatus.DECLINED
        for a in actions
    )
    if declined:
        trace.discard_trigger = trace.discard_trigger or "decline"


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(policy=policies(), data=st.data())
def test_invariants_hold_for_any_event_sequence(policy: c.Policy, data: st.DataObject) -> None:
    run_and_check(c.ConsentCall, policy, data)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_invariants_hold_for_the_default_consent_policy(data: st.DataObject) -> None:
    run_and_check(c.ConsentCall, c.Policy(), data)


# --- the checks can fail: each mutant breaks one rule --------------------------------------


class MutantAnyDigitAccepts(c.ConsentCall):
    """Breaks (a): any answer digit counts as the accept digit."""

    def _answer_digit(self, event):  # type: ignore[override]
        self._dialogue.pressed(event.digit, True)
        return self._decide(c.ConsentStatus.GRANTED, "prompt", confirm="thanks")


class MutantRecordsOnAnswer(c.ConsentCall):
    """Breaks (c)'s order: starts recording as soon as the call is answered, undecided."""

    def _answered(self, event):  # type: ignore[override]
        actions = super()._answered(event)
        rid = self._new_id()
        return [*actions, self._start(rid)]


class MutantKeepsAfterAgentDiscard(c.ConsentCall):
    """Breaks (b): the agent's discard only stops the recording."""

    def _agent_discard(self, event):  # type: ignore[override]
        self.status = c.ConsentStatus.DECLINED
        return self._stop_all()


class MutantForgetsDecisionOnHangup(c.ConsentCall):
    """Breaks (c): a caller who hangs up during the prompt leaves no decision."""

    def _hung_up(self, event):  # type: ignore[override]
        self._logged = True
        self.phase = c.Phase.ENDED
        return []


class MutantKeepsAfterWithdrawal(c.ConsentCall):
    """Breaks (b) for withdrawal: ignores on_withdrawal = stop_and_discard."""

    def _discard_all(self, reason):  # type: ignore[override]
        if reason == "consent_withdrawn":
            return []
        return super()._discard_all(reason)


@pytest.mark.parametrize(
    ("mutant", "complaint"),
    [
        (MutantAnyDigitAccepts, "before the accept digit"),
        (MutantRecordsOnAnswer, "before the decision was logged"),
        (MutantKeepsAfterAgentDiscard, "after agent discard, recordings"),
        (MutantForgetsDecisionOnHangup, "call ended with 0 decisions"),
        (MutantKeepsAfterWithdrawal, "after withdrawal, recordings"),
    ],
)
def test_property_checks_catch_a_broken_machine(
    mutant: type[c.ConsentCall], complaint: str
) -> None:
    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def broken(data: st.DataObject) -> None:
        policy = c.Policy(monitoring_allowed=True, withdraw_digit="5")
        run_and_check(mutant, policy, data)

    with pytest.raises(AssertionError, match=complaint):
        broken()
