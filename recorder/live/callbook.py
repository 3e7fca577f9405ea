"""Calls in progress: each one's consent machine, driven against its PBX, with the store kept
in step. Both adapters use this, so the order "decision stored, then recording registered,
then the PBX records" is written once.

An adapter supplies a :class:`CallControl`: what it can do to a call on its PBX (play a prompt,
set variables, start a MixMonitor or a ``record_session``, …). It opens a :class:`LiveCall`
through the :class:`CallBook`, runs the dialogue with its session's control, and later feeds
what the PBX reports (a recording closed, the call hung up). Agent commands arriving in other
sessions (a feature code on the agent leg, the CLI through the daemon) find the same
``LiveCall`` by the PBX call id and go through the call's out-of-band control.

Store writes are the ledger's ``*_async`` methods (group commit: they return once committed,
holding no thread meanwhile); store reads run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import consent_ivr as c
from recorder import metrics
from recorder.live import withdrawals
from recorder.live.port import CallControl, CallGone, RecordingFile
from recorder.live.prompts import PromptCatalog
from recorder.live.withdrawals import WithdrawMarks
from recorder.store.ledger import CallRef, Ledger

log = logging.getLogger("callconsent.calls")


@dataclass
class LiveCall:
    ref: CallRef
    machine: c.ConsentCall
    ledger: Ledger
    prompts: PromptCatalog | None
    control: CallControl | None = None  # out-of-band control (AMI / inbound ESL), if any
    pbx_channel_id: str | None = None
    pbx_refs: dict[str, str | None] = field(default_factory=dict)
    prompt_digests: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    marks: WithdrawMarks | None = None  # where the PBX marks withdrawals we may not hear

    @property
    def status(self) -> c.ConsentStatus | None:
        return self.machine.status

    async def run_dialogue(self, control: CallControl) -> c.ConsentStatus:
        """From answer to ``Continue`` (or hangup); returns the decision."""
        await self.feed(c.CallAnswered(), control)
        assert self.machine.status is not None  # every dialogue ends decided
        return self.machine.status

    async def feed(self, event: c.Event, control: CallControl | None = None) -> list[c.Action]:
        """Handle one event and perform its actions in order; the dialogue's follow-up events
        (a digit, a finished prompt) are fed in turn. Returns every action performed.

        If the PBX says the channel is gone, the rest of the batch still runs its store
        actions (a ``DiscardRecording`` after a failed stop must never be lost) but no more
        PBX actions, and the machine then hears ``HungUp``. Any other PBX failure also lets
        the batch's store actions run before the error is raised."""
        port = control or self.control
        done: list[c.Action] = []
        pending: list[c.Event] = [event]
        while pending:
            async with self.lock:
                next_event = pending.pop(0)
                if isinstance(next_event, c.HungUp) and self.machine.phase is c.Phase.ENDED:
                    # a hangup heard twice (the dialogue's session and the event stream both
                    # report it) or after the dialogue ended: normal, nothing to do
                    continue
                actions = self.machine.handle(next_event)
                gone = False
                joined = -1  # a StartRecording already done with the LogConsent before it
                for i, action in enumerate(actions):
                    if i == joined or (gone and not isinstance(action, _STORE_ACTIONS)):
                        continue
                    try:
                        if port is not None and not gone and _decision_then_start(actions, i):
                            joined = i + 1
                            done.append(action)  # committed before the PBX hears of it
                            action = actions[joined]
                            follow = await self._decide_and_start(actions[i], action, port)
                        else:
                            follow = await self._perform(
                                action, port, getattr(next_event, "agent", None)
                            )
                    except CallGone:
                        gone, follow = True, None
                    except Exception:
                        # the machine has decided (e.g. stop, then discard): the store must
                        # still hear it even though the PBX failed; then the error goes up
                        await self._store_only(actions[i + 1 :], port)
                        raise
                    done.append(action)
                    if follow is not None:
                        pending.append(follow)
                        break  # the rest of this batch follows from the dialogue's answer
                if gone and self.machine.phase is not c.Phase.ENDED:
                    pending.append(c.HungUp())
        return done

    async def _store_only(self, actions: list[c.Action], port: CallControl | None) -> None:
        for action in actions:
            if isinstance(action, _STORE_ACTIONS):
                await self._perform(action, port)

    async def agent(
        self, verb: str, actor: str | None = None, control: CallControl | None = None
    ) -> list[c.Action]:
        """An agent command (feature code or CLI). Refusals come back as ``RejectCommand``.
        A control that cannot start recordings (Asterisk's AMI without the opt-in
        ``write=system`` user) says why in ``start_refusal``; start is then refused here."""
        refusal = (
            getattr(control or self.control, "start_refusal", None) if verb == "start" else None
        )
        if refusal:
            log.info(
                "agent_command_refused",
                extra={"kv": {"call": self.ref.id, "verb": verb, "reason": refusal}},
            )
            metrics.AGENT_COMMANDS.labels(verb, "refused").inc()
            return [c.RejectCommand(verb, refusal)]
        done = await self.feed(c.AgentCommand(verb, actor), control)  # type: ignore[arg-type]
        refused = any(isinstance(a, c.RejectCommand) for a in done)
        metrics.AGENT_COMMANDS.labels(verb, "refused" if refused else "done").inc()
        return done

    async def recording_closed(self, recording_id: str) -> None:
        """The PBX closed this recording's file and its header is final."""
        await self.ledger.recording_closed_async(recording_id)
        if recording_id in self.machine.recordings:
            await self.feed(c.RecordingStopped(recording_id))

    async def hung_up(self) -> None:
        await self.consult_withdraw_marks()
        if self.machine.phase is not c.Phase.ENDED:
            await self.feed(c.HungUp())
        await self.ledger.call_ended_async(self.ref.id)

    async def consult_withdraw_marks(self, control: CallControl | None = None) -> bool:
        """Before the call ends: did the caller press the withdraw key while we could not
        hear it (:mod:`recorder.live.withdrawals`)? A failure to ask is logged, not raised: the
        hangup goes on. True if a withdrawal was learnt."""
        if self.marks is None or self.machine.policy.withdraw_digit is None:
            return False
        if self.status not in (c.ConsentStatus.GRANTED, c.ConsentStatus.WITHDRAWN):
            return False
        try:
            channels = await asyncio.to_thread(self.ledger.customer_channels, self.ref.id)
            return await consult_marks(self, self.marks, channels, control)
        except Exception as exc:  # the PBX cannot be asked now (its connection is down)
            log.warning(
                "withdraw_marks_unread", extra={"kv": {"call": self.ref.id, "error": repr(exc)}}
            )
            return False

    async def _perform(
        self, action: c.Action, port: CallControl | None, actor: str | None = None
    ) -> c.Event | None:
        """Do one action; ``actor`` is the agent whose command led to it, if one did."""
        ledger = self.ledger
        match action:
            case c.LogConsent(evidence=evidence):
                await ledger.log_consent_async(
                    self.ref.id,
                    evidence,
                    prompt_digests=self.prompt_digests,
                    pbx_call_id=self.ref.pbx_call_id,
                    pbx_channel_id=self.pbx_channel_id,
                )
                self._log_decision(evidence)
            case c.LogStatusChange(status=status, cause=cause, at=at, actor=actor):
                await asyncio.to_thread(
                    ledger.log_status_change, self.ref.id, status, cause, at, actor
                )
                log.info(
                    "consent_change",
                    extra={"kv": {"call": self.ref.id, "status": status.value, "cause": cause}},
                )
            case c.PlayPrompt():
                file = self.prompts.get(action.prompt_id, action.language) if self.prompts else None
                if file is None:
                    log.error(
                        "prompt_missing",
                        extra={"kv": {"prompt": action.prompt_id, "language": action.language}},
                    )
                    return c.PromptFailed(action.prompt_id, "no such prompt file")
                self.prompt_digests[action.prompt_id] = file.sha256
                return await _need(port).play(action, file)
            case c.CollectDigit():
                return await _need(port).collect(action)
            case c.SetVariables(variables=variables):
                await _need(port).set_variables(variables)
            case c.StartRecording(recording_id=rid, stereo=stereo):
                await self._start(rid, stereo, _need(port))
            case c.PauseRecording(recording_id=rid):
                await _need(port).pause_recording(rid, self.pbx_refs.get(rid))
                # once the PBX has muted it: the moment the player marks the stretch from
                await ledger.recording_paused_async(rid, True, actor)
            case c.ResumeRecording(recording_id=rid):
                await _need(port).resume_recording(rid, self.pbx_refs.get(rid))
                await ledger.recording_paused_async(rid, False, actor)
            case c.StopRecording(recording_id=rid):
                await _need(port).stop_recording(rid, self.pbx_refs.get(rid))
            case c.DiscardRecording(recording_id=rid, reason=reason):
                await ledger.discard_async(rid, reason, None)
                log.info("recording_discarded", extra={"kv": {"recording": rid, "reason": reason}})
            case c.AllowMonitoring():
                await _need(port).allow_monitoring()
            case c.StopMonitoring():
                await _need(port).stop_monitoring()
            case c.RejectCommand(verb=verb, reason=reason):
                log.info(
                    "agent_command_refused",
                    extra={"kv": {"call": self.ref.id, "verb": verb, "reason": reason}},
                )
                if port is not None:
                    await port.reject(verb, reason)
            case c.Continue():
                await _need(port).hand_back()
            case _:  # pragma: no cover - a new action class without a case here
                raise TypeError(f"no handler for {action!r}")
        return None

    def _log_decision(self, evidence: c.ConsentEvidence) -> None:
        log.info(
            "consent_decision",
            extra={
                "kv": {
                    "call": self.ref.id,
                    "status": evidence.decision.value,
                    "method": evidence.method,
                    "campaign": self.ref.campaign,
                }
            },
        )

    def _recording_row(self, file: RecordingFile) -> dict[str, Any]:
        return {
            "spool_path": str(file.path),
            "fmt": file.fmt,
            "channels": file.channels,
            "sample_rate": file.sample_rate,
            "pbx_channel": self.pbx_channel_id,
            "retention_category": self.machine.policy.retention_category,
        }

    async def _decide_and_start(
        self, decision: c.LogConsent, start: c.StartRecording, port: CallControl
    ) -> None:
        """The accept key: the evidence and the recording's registration in one commit, then
        the PBX records. One commit instead of two before ``record_session``/``MixMonitor``
        keeps the caller's first words after the key in the recording (issue 14, point 1),
        and the order stays "evidence durable, recording registered, then the PBX records"."""
        file = port.recording_file(start.recording_id, start.stereo)
        await self.ledger.log_consent_and_start_async(
            self.ref.id,
            decision.evidence,
            start.recording_id,
            prompt_digests=self.prompt_digests,
            pbx_call_id=self.ref.pbx_call_id,
            pbx_channel_id=self.pbx_channel_id,
            **self._recording_row(file),
        )
        self._log_decision(decision.evidence)
        await self._record(start.recording_id, file, port)

    async def _start(self, rid: str, stereo: bool, port: CallControl) -> None:
        """Register first (so a file in the spool is always accounted for), then record."""
        file = port.recording_file(rid, stereo)
        await self.ledger.recording_started_async(self.ref.id, rid, **self._recording_row(file))
        await self._record(rid, file, port)

    async def _record(self, rid: str, file: RecordingFile, port: CallControl) -> None:
        """Ask the PBX to record a registered recording; discarded if the call is gone."""
        try:
            ref = await port.start_recording(rid, file)
        except CallGone:
            await self.ledger.discard_async(rid, "start_failed_call_gone", None)
            raise
        self.pbx_refs[rid] = ref
        if ref:
            await self.ledger.set_pbx_ref_async(rid, ref)
        # feed() holds the lock; a recording just requested is confirmed without actions
        self.machine.handle(c.RecordingStarted(rid))
        log.info("recording_started", extra={"kv": {"call": self.ref.id, "recording": rid}})


def _decision_then_start(actions: list[c.Action], i: int) -> bool:
    """The accept key's actions: the decision, and at once a recording to start."""
    return (
        isinstance(actions[i], c.LogConsent)
        and i + 1 < len(actions)
        and isinstance(actions[i + 1], c.StartRecording)
    )


# Actions that only touch the store: performed even once the PBX has lost the channel.
_STORE_ACTIONS = (c.LogConsent, c.LogStatusChange, c.DiscardRecording)

# A recording the store says is "recording" is taken as running and unpaused: the mute state
# is not stored, so after a restart the first pause command may be a repeat (harmless).
_RESTORED = {
    "recording": c.RecordingState.ACTIVE,
    "closed": c.RecordingState.STOPPED,
    "encrypted": c.RecordingState.STOPPED,
    "discarded": c.RecordingState.DISCARDED,
    "purged": c.RecordingState.DISCARDED,
}


def _need(port: CallControl | None) -> CallControl:
    if port is None:
        raise CallGone("no way to reach this call on its PBX any more")
    return port


class CallBook:
    """The calls in progress on this host, by PBX and PBX call id."""

    def __init__(
        self, ledger: Ledger, policies: Callable[[], c.PolicyBook], prompts: PromptCatalog | None
    ) -> None:
        self.ledger = ledger
        self.policies = policies  # a callable, so SIGHUP's new policies apply to new calls
        self.prompts = prompts
        self._calls: dict[tuple[str, str], LiveCall] = {}
        #: per PBX, where its dialplan marks a withdrawal (recorder.live.withdrawals)
        self.marks: dict[str, WithdrawMarks] = {}
        #: per PBX, called with each call rebuilt from the store (an adapter gives it back its
        #: out-of-band control, so `callconsent record` reaches it after a daemon restart)
        self.restorers: dict[str, Callable[[LiveCall], Awaitable[None]]] = {}

    async def open(
        self,
        *,
        pbx: str,
        pbx_call_id: str,
        campaign: str,
        direction: str = "inbound",
        number: str | None = None,
        number_withheld: bool = False,
        channel_language: str | None = None,
        pbx_channel_id: str | None = None,
        agent: str | None = None,
        control: CallControl | None = None,
    ) -> LiveCall:
        """The live call for this PBX call id; created (and stored) on first sight."""
        key = (pbx, pbx_call_id)
        if key in self._calls:
            return self._calls[key]
        ref = await self.ledger.open_call_async(
            pbx=pbx,
            pbx_call_id=pbx_call_id,
            campaign=campaign,
            direction=direction,
            number=number,
            number_withheld=number_withheld,
            agent=agent,
        )
        policy = self.policies().for_campaign(campaign)
        available = self.prompts.languages if self.prompts else ()
        machine = c.ConsentCall(
            policy, channel_language=channel_language, available_languages=available
        )
        live = LiveCall(
            ref,
            machine,
            self.ledger,
            self.prompts,
            control=control,
            pbx_channel_id=pbx_channel_id,
            marks=self.marks.get(pbx),
        )
        self._calls.setdefault(key, live)
        return self._calls[key]

    def find(self, pbx: str, pbx_call_id: str) -> LiveCall | None:
        """A call this daemon has in memory."""
        return self._calls.get((pbx, pbx_call_id))

    async def lookup(self, pbx: str, pbx_call_id: str) -> LiveCall | None:
        """A call in memory, or one decided before this daemon (re)started, rebuilt from the
        store: an agent's feature code keeps working across a daemon restart."""
        live = self.find(pbx, pbx_call_id)
        if live is not None:
            return live
        state = await asyncio.to_thread(self.ledger.call_state, pbx, pbx_call_id)
        if state is None or state.ref.consent_status is None:
            return None
        policy = self.policies().for_campaign(state.ref.campaign)
        snapshot = c.CallSnapshot(
            consent_id=state.consent_id,
            status=c.ConsentStatus(state.ref.consent_status),
            language=state.language or policy.language,
            recordings={rid: _RESTORED[st] for rid, (st, _) in state.recordings.items()},
            ended=state.ended,
        )
        live = LiveCall(
            state.ref,
            c.ConsentCall.restore(policy, snapshot),
            self.ledger,
            self.prompts,
            marks=self.marks.get(pbx),
        )
        live.pbx_refs = {rid: ref for rid, (_, ref) in state.recordings.items()}
        log.info(
            "call_restored", extra={"kv": {"call": state.ref.id, "status": snapshot.status.value}}
        )
        if (pbx, pbx_call_id) not in self._calls and pbx in self.restorers:
            await self.restorers[pbx](live)
        self._calls.setdefault((pbx, pbx_call_id), live)
        return self._calls[(pbx, pbx_call_id)]

    def forget(self, pbx: str, pbx_call_id: str) -> None:
        """Drop a call from memory (after hangup, once its recordings are closed)."""
        self._calls.pop((pbx, pbx_call_id), None)

    def __len__(self) -> int:
        return len(self._calls)


# -- withdrawals learnt from the PBX's marks (recorder.live.withdrawals finds them) ----------


class _Gone:
    """The control of a call whose channels are gone: every PBX action says so."""

    def __getattr__(self, name: str) -> object:
        async def gone(*_: object, **__: object) -> None:
            raise CallGone("the call is over")

        return gone


GONE: CallControl = _Gone()  # type: ignore[assignment]


async def consult_marks(
    live: LiveCall,
    marks: WithdrawMarks,
    channels: Iterable[str],
    control: CallControl | None = None,
) -> bool:
    """Look for marks on ``channels`` (the call's customer leg(s)) and :func:`act_on_marks` on them.
    True if a withdrawal was learnt here."""
    return await act_on_marks(live, marks, await withdrawals.find(marks, channels), control)


async def act_on_marks(
    live: LiveCall | None,
    marks: WithdrawMarks,
    found: list[withdrawals.WithdrawMark],
    control: CallControl | None = None,
) -> bool:
    """Withdraw a granted consent as the module says, then remove the marks. ``live`` is
    None for a call never decided (nothing to withdraw). ``control`` reaches the call if it
    is still up (else none: the machine's PBX actions are skipped, its store actions done).
    True if a withdrawal was learnt here."""
    learnt = False
    if found and live is not None and live.status is c.ConsentStatus.GRANTED:
        times = [m.at for m in found]
        at = None if None in times else min(t for t in times if t is not None)
        await learn_withdrawal(live, at, control)
        learnt = True
    for mark in found:
        await marks.clear(mark.channel)
    return learnt


async def learn_withdrawal(
    live: LiveCall, at: datetime | None, control: CallControl | None = None
) -> None:
    """Withdraw the call's consent as of ``at`` (None: unknown) and apply ``on_withdrawal``."""
    log.warning(
        "caller_withdrew_while_away",
        extra={"kv": {"call": live.ref.id, "at": at.isoformat() if at else "unknown"}},
    )
    await live.feed(c.CallerWithdrew(at=at, cause=withdrawals.CAUSE), control or GONE)
    if live.machine.policy.on_withdrawal.value == "stop_and_discard":
        return  # the machine discarded them all
    for rid in await asyncio.to_thread(withdrawals.ran_past, live.ledger, live.ref.id, at):
        if await live.ledger.discard_async(rid, "recorded_past_withdrawal", None):
            log.warning(
                "recording_discarded",
                extra={"kv": {"recording": rid, "reason": "recorded_past_withdrawal"}},
            )
