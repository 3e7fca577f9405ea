"""The consent state machine: events in, actions out.

Theory of operation
-------------------
One :class:`ConsentCall` per call. The adapter (Asterisk or FreeSWITCH) feeds it events and
performs the actions it returns, in order; it never decides anything itself. The machine does
no I/O and knows no PBX; a clock and an id factory are injected so tests control both.

Everything that affects the rules lives in this file. A call has two parts of state:

* the **phase** of the dialogue, driven by :data:`TRANSITIONS`, a table of
  ``(phase, event type) -> handler`` read top to bottom; a pair that is not in it raises
  :class:`IllegalTransition` and leaves the call untouched;
* the **recordings** of the call, each with its own :class:`RecordingState`. A call may have
  several (an agent stops, then starts again); each has its own id.

The rules this file guarantees (for any event sequence, checked by
``tests/consent_ivr/test_consent_properties.py``):

1. On a call whose policy asks for consent, no ``StartRecording`` comes before the caller's
   accept digit.
2. After a decline, a withdrawal (policy ``stop_and_discard``) or an agent ``discard``, every
   recording of the call is discarded; nothing recorded so far is kept.
3. A call that ends has exactly one ``LogConsent``: one final consent decision, logged before
   any recording starts. Later changes (withdrawal, agent discard) are ``LogStatusChange``.
4. A declined or silent caller is never hung up: the dialogue always ends in ``Continue``.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent_ivr.actions import (
    Action,
    AllowMonitoring,
    CollectDigit,
    Continue,
    DiscardRecording,
    LogConsent,
    LogStatusChange,
    PauseRecording,
    PlayPrompt,
    RejectCommand,
    ResumeRecording,
    SetVariables,
    StartRecording,
    StopMonitoring,
    StopRecording,
)
from consent_ivr.errors import IllegalTransition
from consent_ivr.events import (
    AgentAnswered,
    AgentCommand,
    CallAnswered,
    CallerWithdrew,
    DigitReceived,
    Event,
    HungUp,
    InputTimedOut,
    PromptFailed,
    PromptFinished,
    RecordingStarted,
    RecordingStopped,
)
from consent_ivr.evidence import ConsentEvidence, DecisionMethod, DialogueLog
from consent_ivr.policy import Mode, Policy, RecordFrom, SilenceOutcome
from consent_ivr.status import ConsentStatus


class Phase(enum.Enum):
    READY = "ready"  # created; waiting for the call to be answered
    ASKING = "asking"  # the consent question plays; the answer digits barge in
    WAITING = "waiting"  # the question has played; waiting for a digit
    NOTIFYING = "notifying"  # the notice of a non-consent legal basis plays
    CONFIRMING = "confirming"  # thanks / declined / no-input plays
    CONNECTED = "connected"  # handed back to the dialplan: agents, withdrawals
    ENDED = "ended"  # the customer leg hung up

    def __str__(self) -> str:
        return self.value


class RecordingState(enum.Enum):
    RESERVED = "reserved"  # id allotted; starts when the agent answers
    REQUESTED = "requested"  # StartRecording sent, not yet confirmed
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPING = "stopping"  # StopRecording sent
    STOPPED = "stopped"  # the PBX closed the file; it goes on to the finalizer
    DISCARDED = "discarded"  # must never be kept

    @property
    def running(self) -> bool:
        return self in (RecordingState.REQUESTED, RecordingState.ACTIVE, RecordingState.PAUSED)


# ---------------------------------------------------------------------------------------------
# The transition table. Each handler returns the actions for the adapter and sets the next
# phase itself (some events lead to different phases depending on the digit or the policy).
# Recording confirmations are accepted in every phase but READY: the PBX reports them
# whenever it gets round to it.
# ---------------------------------------------------------------------------------------------
TRANSITIONS: dict[tuple[Phase, type[Event]], str] = {
    (Phase.READY, CallAnswered): "_answered",
    (Phase.READY, HungUp): "_hung_up",
    (Phase.ASKING, DigitReceived): "_answer_digit",
    (Phase.ASKING, PromptFinished): "_question_played",
    (Phase.ASKING, PromptFailed): "_question_failed",
    (Phase.ASKING, HungUp): "_hung_up",
    (Phase.WAITING, DigitReceived): "_answer_digit",
    (Phase.WAITING, InputTimedOut): "_silence",
    (Phase.WAITING, HungUp): "_hung_up",
    (Phase.NOTIFYING, DigitReceived): "_notice_digit",
    (Phase.NOTIFYING, PromptFinished): "_notice_played",
    (Phase.NOTIFYING, PromptFailed): "_question_failed",
    (Phase.NOTIFYING, HungUp): "_hung_up",
    (Phase.CONFIRMING, DigitReceived): "_ignore",
    (Phase.CONFIRMING, PromptFinished): "_confirmed",
    (Phase.CONFIRMING, PromptFailed): "_confirmed",
    (Phase.CONFIRMING, AgentAnswered): "_on_agent_answer",
    (Phase.CONFIRMING, CallerWithdrew): "_withdrew",
    (Phase.CONFIRMING, HungUp): "_hung_up",
    (Phase.CONNECTED, DigitReceived): "_mid_call_digit",
    (Phase.CONNECTED, AgentAnswered): "_on_agent_answer",
    (Phase.CONNECTED, AgentCommand): "_agent_command",
    (Phase.CONNECTED, CallerWithdrew): "_withdrew",
    (Phase.CONNECTED, HungUp): "_hung_up",
    (Phase.ENDED, AgentCommand): "_command_after_end",
    (Phase.ENDED, AgentAnswered): "_ignore",
}
for _phase in Phase:
    if _phase is not Phase.READY:
        TRANSITIONS[(_phase, RecordingStarted)] = "_recording_started"
        TRANSITIONS[(_phase, RecordingStopped)] = "_recording_stopped"
for _phase in (Phase.ASKING, Phase.WAITING, Phase.NOTIFYING, Phase.CONFIRMING):
    TRANSITIONS[(_phase, AgentCommand)] = "_command_too_early"
del _phase


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """What survives the end of a dialogue session, so another session (the agent's feature
    code, an agent-answer hook, a restarted daemon) can carry on with the same call."""

    consent_id: str
    status: ConsentStatus
    language: str
    recordings: Mapping[str, RecordingState]
    agent_answered: bool = False
    ended: bool = False


class ConsentCall:
    """One call's consent dialogue and recordings. Not thread-safe; one per call."""

    def __init__(
        self,
        policy: Policy,
        *,
        channel_language: str | None = None,
        available_languages: Iterable[str] = (),
        clock: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.policy = policy
        self.language = policy.resolve_language(channel_language, available_languages)
        self._clock = clock
        self._new_id = new_id
        self.consent_id = new_id()
        self.phase = Phase.READY
        self.status: ConsentStatus | None = None
        self._recordings: dict[str, RecordingState] = {}
        self._agent_answered = False
        self._dialogue = DialogueLog(clock, self.language)
        self._logged = False

    # -- public surface ------------------------------------------------------------------

    @property
    def recordings(self) -> Mapping[str, RecordingState]:
        return dict(self._recordings)

    @property
    def current_recording(self) -> str | None:
        """The recording an agent's pause/resume/stop addresses, if one runs."""
        for rid, state in reversed(self._recordings.items()):
            if state.running or state is RecordingState.RESERVED:
                return rid
        return None

    @property
    def decided(self) -> bool:
        return self._logged

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; get the actions to perform, in order."""
        name = TRANSITIONS.get((self.phase, type(event)))
        if name is None:
            raise IllegalTransition(self.phase, event)
        handler: Callable[[Any], list[Action]] = getattr(self, name)
        return handler(event)

    def snapshot(self) -> CallSnapshot:
        if not self._logged or self.status is None:
            raise IllegalTransition(self.phase, "snapshot", "no decision has been made yet")
        return CallSnapshot(
            consent_id=self.consent_id,
            status=self.status,
            language=self.language,
            recordings=dict(self._recordings),
            agent_answered=self._agent_answered,
            ended=self.phase is Phase.ENDED,
        )

    @classmethod
    def restore(
        cls,
        policy: Policy,
        snapshot: CallSnapshot,
        *,
        clock: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = _new_id,
    ) -> ConsentCall:
        """Rebuild a decided call (its dialogue over) from what the store kept."""
        call = cls(policy, clock=clock, new_id=new_id)
        call.consent_id = snapshot.consent_id
        call.language = call._dialogue.language = snapshot.language
        call.status = snapshot.status
        call._recordings = dict(snapshot.recordings)
        call._agent_answered = snapshot.agent_answered
        call._logged = True
        call.phase = Phase.ENDED if snapshot.ended else Phase.CONNECTED
        return call

    # -- the dialogue ----------------------------------------------------------------------

    def _answered(self, _: CallAnswered) -> list[Action]:
        p = self.policy
        if p.mode is Mode.CONSENT and p.asks_consent:
            return self._ask()
        if p.mode in (Mode.CONSENT, Mode.ALWAYS) and p.announce:
            self.phase = Phase.NOTIFYING
            self._dialogue.question = "notice"
            barge = p.decline_digit if p.allows_objection else ""
            return [self._play("notice", barge)]
        # never, on_demand, or always without an announcement
        return self._decide(ConsentStatus.NOT_REQUIRED, "policy", confirm=None)

    def _ask(self) -> list[Action]:
        self.phase = Phase.ASKING
        self._dialogue.attempts += 1
        self._dialogue.question = "consent"
        return [self._play("consent", self.policy.accept_digit + self.policy.decline_digit)]

    def _question_played(self, event: PromptFinished) -> list[Action]:
        self._dialogue.prompt_ended("finished")
        self.phase = Phase.WAITING
        valid = self.policy.accept_digit + self.policy.decline_digit
        return [CollectDigit(self.policy.digit_timeout_ms, valid)]

    def _answer_digit(self, event: DigitReceived) -> list[Action]:
        p = self.policy
        valid = event.digit in (p.accept_digit, p.decline_digit)
        if self.phase is Phase.ASKING:
            self._dialogue.prompt_ended("interrupted")
        self._dialogue.pressed(event.digit, valid)
        if event.digit == p.accept_digit:
            return self._decide(ConsentStatus.GRANTED, "prompt", confirm="thanks")
        if event.digit == p.decline_digit:
            return self._decide(ConsentStatus.DECLINED, "prompt", confirm="declined")
        return self._retry_or_give_up()

    def _silence(self, _: InputTimedOut) -> list[Action]:
        return self._retry_or_give_up()

    def _retry_or_give_up(self) -> list[Action]:
        if self._dialogue.attempts < self.policy.max_attempts:
            return self._ask()
        # silence_outcome is always DECLINE when the policy asks for consent (validated)
        return self._decide(ConsentStatus.NO_INPUT, "prompt", confirm="no_input")

    def _question_failed(self, event: PromptFailed) -> list[Action]:
        """We could not ask (or inform), so nothing may be recorded: the call goes on."""
        self._dialogue.prompt_ended("failed")
        return self._decide(ConsentStatus.UNAVAILABLE, "prompt_failed", confirm=None)

    def _notice_digit(self, event: DigitReceived) -> list[Action]:
        p = self.policy
        if p.allows_objection and event.digit == p.decline_digit:
            self._dialogue.prompt_ended("interrupted")
            self._dialogue.pressed(event.digit, True)
            return self._decide(ConsentStatus.DECLINED, "notice", confirm="declined")
        self._dialogue.pressed(event.digit, False)
        return []

    def _notice_played(self, _: PromptFinished) -> list[Action]:
        self._dialogue.prompt_ended("finished")
        if self.policy.allows_objection and self.policy.silence_outcome is SilenceOutcome.DECLINE:
            return self._decide(ConsentStatus.NO_INPUT, "notice", confirm=None)
        return self._decide(ConsentStatus.NOT_REQUIRED, "notice", confirm=None)

    def _confirmed(self, event: PromptFinished | PromptFailed) -> list[Action]:
        self._dialogue.prompt_ended("finished" if isinstance(event, PromptFinished) else "failed")
        self.phase = Phase.CONNECTED
        return [Continue()]

    def _decide(
        self, status: ConsentStatus, method: DecisionMethod, confirm: str | None
    ) -> list[Action]:
        """Log the one consent decision, then (only then) start recording and set variables.

        The recording starts before the variables are set: the evidence is stored by then,
        and on FreeSWITCH each application waits for a media frame, so every ``export``
        ahead of ``record_session`` would cost the caller's first words after the key."""
        self.status = status
        self._logged = True
        actions: list[Action] = [LogConsent(self._evidence(status, method))]
        rid = None
        if self._may_record():
            rid = self._new_id()
            self._recordings[rid] = RecordingState.RESERVED
        if rid is not None and (
            self.policy.record_from is RecordFrom.CONSENT or self._agent_answered
        ):
            actions.append(self._start(rid))
        actions.append(SetVariables(self._variables(rid)))
        if status is ConsentStatus.GRANTED and self.policy.monitoring_allowed:
            actions.append(AllowMonitoring())
        if confirm is not None:
            self.phase = Phase.CONFIRMING
            actions.append(self._play(confirm))
        else:
            self.phase = Phase.CONNECTED
            actions.append(Continue())
        return actions

    def _may_record(self) -> bool:
        if self.status is ConsentStatus.GRANTED:
            return True
        return self.status is ConsentStatus.NOT_REQUIRED and self.policy.mode in (
            Mode.CONSENT,
            Mode.ALWAYS,
        )

    def _hung_up(self, _: HungUp) -> list[Action]:
        actions: list[Action] = []
        if self.phase in (Phase.ASKING, Phase.NOTIFYING, Phase.CONFIRMING):
            self._dialogue.prompt_ended("hangup")
        if not self._logged:
            status = ConsentStatus.NO_INPUT
            if self.phase is Phase.NOTIFYING and not self.policy.allows_objection:
                status = ConsentStatus.NOT_REQUIRED
            self.status = status
            self._logged = True
            actions.append(LogConsent(self._evidence(status, "hangup")))
        for rid, state in self._recordings.items():
            # The PBX closes what runs on a channel that hangs up; nothing to send.
            if state.running or state is RecordingState.STOPPING:
                self._recordings[rid] = RecordingState.STOPPED
        self._drop_reserved()
        self.phase = Phase.ENDED
        return actions

    # -- after the dialogue ----------------------------------------------------------------

    def _mid_call_digit(self, event: DigitReceived) -> list[Action]:
        if self.policy.withdraw_digit is not None and event.digit == self.policy.withdraw_digit:
            return self._withdrew(CallerWithdrew())
        return []

    def _withdrew(self, event: CallerWithdrew) -> list[Action]:
        if self.status is not ConsentStatus.GRANTED:
            return []  # nothing was consented to, so there is nothing to withdraw
        self.status = ConsentStatus.WITHDRAWN
        actions: list[Action] = [
            LogStatusChange(ConsentStatus.WITHDRAWN, event.cause, event.at or self._clock()),
            SetVariables({"CONSENT_STATUS": ConsentStatus.WITHDRAWN.value}),
        ]
        if self.policy.monitoring_allowed:
            actions.append(StopMonitoring())
        actions += self._stop_all()
        if self.policy.on_withdrawal.value == "stop_and_discard":
            actions += self._discard_all("consent_withdrawn")
        self._drop_reserved()
        return actions

    def _on_agent_answer(self, event: AgentAnswered) -> list[Action]:
        if self._agent_answered:
            return []
        self._agent_answered = True
        if self.status is None or self.status not in (
            ConsentStatus.GRANTED,
            ConsentStatus.NOT_REQUIRED,
        ):
            return []
        for rid, state in self._recordings.items():
            if state is RecordingState.RESERVED:
                return [self._start(rid)]
        return []

    def _agent_command(self, event: AgentCommand) -> list[Action]:
        if event.verb == "start":
            return self._agent_start(event)
        if event.verb == "discard":
            return self._agent_discard(event)
        rid = self.current_recording
        state = self._recordings[rid] if rid is not None else None
        if event.verb == "pause" and state is RecordingState.ACTIVE:
            self._recordings[rid] = RecordingState.PAUSED  # type: ignore[index]
            return [PauseRecording(rid)]  # type: ignore[arg-type]
        if event.verb == "resume" and state is RecordingState.PAUSED:
            self._recordings[rid] = RecordingState.ACTIVE  # type: ignore[index]
            return [ResumeRecording(rid)]  # type: ignore[arg-type]
        if event.verb == "stop" and state is not None and state.running:
            self._recordings[rid] = RecordingState.STOPPING  # type: ignore[index]
            return [StopRecording(rid)]  # type: ignore[arg-type]
        if event.verb == "stop" and state is RecordingState.RESERVED:
            self._drop_reserved()  # the agent does not want it started when they answer
            return []
        wanted = {"pause": "active", "resume": "paused", "stop": "running"}[event.verb]
        return [RejectCommand(event.verb, f"no recording is {wanted}")]

    def _agent_start(self, event: AgentCommand) -> list[Action]:
        p = self.policy
        status = self.status
        refusal = None
        if p.mode is Mode.NEVER:
            refusal = "the policy never records this campaign"
        elif status in (ConsentStatus.DECLINED, ConsentStatus.WITHDRAWN):
            refusal = f"consent is {status.value}"  # type: ignore[union-attr]
        elif status is ConsentStatus.UNAVAILABLE:
            refusal = "consent could not be asked"
        elif status is ConsentStatus.NO_INPUT:
            refusal = "the caller gave no consent"
        elif any(s is RecordingState.DISCARDED for s in self._recordings.values()):
            refusal = "a recording of this call was discarded"
        elif any(s.running for s in self._recordings.values()):
            refusal = "a recording is already running"
        if refusal is not None:
            return [RejectCommand("start", refusal)]
        actions: list[Action] = []
        if (
            status is ConsentStatus.NOT_REQUIRED
            and p.mode is Mode.ON_DEMAND
            and (p.legal_basis.value == "consent")
        ):
            # on_demand under the consent basis: the agent asked, and attests the caller's yes
            self.status = ConsentStatus.GRANTED
            actions += [
                LogStatusChange(
                    ConsentStatus.GRANTED, "agent_attested", self._clock(), event.agent
                ),
                SetVariables({"CONSENT_STATUS": ConsentStatus.GRANTED.value}),
            ]
        reserved = [r for r, s in self._recordings.items() if s is RecordingState.RESERVED]
        rid = reserved[0] if reserved else self._new_id()
        actions.append(self._start(rid))
        actions.append(SetVariables({"CONSENT_RECORDING_ID": rid}))
        return actions

    def _agent_discard(self, event: AgentCommand) -> list[Action]:
        """``*49``: the customer said no to the agent. Stop, destroy, and record no more."""
        actions: list[Action] = []
        if self.status is not ConsentStatus.DECLINED:
            was_monitored = self.status is ConsentStatus.GRANTED and self.policy.monitoring_allowed
            self.status = ConsentStatus.DECLINED
            actions += [
                LogStatusChange(
                    ConsentStatus.DECLINED, "agent_discard", self._clock(), event.agent
                ),
                SetVariables({"CONSENT_STATUS": ConsentStatus.DECLINED.value}),
            ]
            if was_monitored:
                actions.append(StopMonitoring())
        actions += self._stop_all()
        actions += self._discard_all("agent_discard")
        self._drop_reserved()
        return actions

    def _command_after_end(self, event: AgentCommand) -> list[Action]:
        if event.verb == "discard":
            # Still honoured after hangup: what was recorded must not be kept.
            return self._agent_discard(event)
        return [RejectCommand(event.verb, "the call has ended")]

    def _command_too_early(self, event: AgentCommand) -> list[Action]:
        return [RejectCommand(event.verb, "the consent dialogue is still running")]

    def _ignore(self, _: Event) -> list[Action]:
        return []

    # -- recordings ------------------------------------------------------------------------

    def _recording_started(self, event: RecordingStarted) -> list[Action]:
        state = self._recordings.get(event.recording_id)
        if state is RecordingState.REQUESTED:
            self._recordings[event.recording_id] = RecordingState.ACTIVE
            return []
        if state is RecordingState.DISCARDED:
            # It was destroyed before the PBX got round to starting it: stop it at once.
            return [StopRecording(event.recording_id)]
        raise IllegalTransition(
            self.phase, event, f"recording is {state.value if state else 'unknown'}"
        )

    def _recording_stopped(self, event: RecordingStopped) -> list[Action]:
        state = self._recordings.get(event.recording_id)
        if state is None or state is RecordingState.RESERVED:
            raise IllegalTransition(self.phase, event, "no such recording was started")
        if state is not RecordingState.DISCARDED:
            self._recordings[event.recording_id] = RecordingState.STOPPED
        return []

    def _start(self, rid: str) -> StartRecording:
        self._recordings[rid] = RecordingState.REQUESTED
        return StartRecording(rid, stereo=self.policy.stereo)

    def _stop_all(self) -> list[Action]:
        actions: list[Action] = []
        for rid, state in self._recordings.items():
            if state.running:
                self._recordings[rid] = RecordingState.STOPPING
                actions.append(StopRecording(rid))
        return actions

    def _discard_all(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for rid, state in self._recordings.items():
            if state in (RecordingState.RESERVED, RecordingState.DISCARDED):
                continue
            self._recordings[rid] = RecordingState.DISCARDED
            actions.append(DiscardRecording(rid, reason))
        return actions

    def _drop_reserved(self) -> None:
        for rid in [r for r, s in self._recordings.items() if s is RecordingState.RESERVED]:
            del self._recordings[rid]

    # -- evidence ----------------------------------------------------------------------------

    def _play(self, prompt_id: str, barge_in: str = "") -> PlayPrompt:
        self._dialogue.played(prompt_id)
        return PlayPrompt(prompt_id, self.language, barge_in)

    def _evidence(self, status: ConsentStatus, method: DecisionMethod) -> ConsentEvidence:
        p = self.policy
        return self._dialogue.evidence(
            self.consent_id, status, method, p.legal_basis.value, p.mode.value, p.snapshot()
        )

    def _variables(self, rid: str | None) -> dict[str, str]:
        assert self.status is not None
        return {
            "CONSENT_STATUS": self.status.value,
            "CONSENT_ID": self.consent_id,
            "CONSENT_RECORDING_ID": rid or "",
        }
