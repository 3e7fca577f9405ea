"""The two ways we act on a call's customer leg: through an AGI session running *on* it, and
out of band through AMI. Both implement :class:`recorder.live.callbook.CallControl`.

* :class:`ChannelControl`: an AGI session on the customer leg (the consent dialogue, the
  ``peer`` feature that starts a recording, the caller's withdraw key, the answer hook). It
  plays prompts, collects digits and starts ``MixMonitor`` with ``EXEC``: starting inside the
  call needs no ``write=system`` AMI user.
* :class:`AmiControl`: everything else (feature codes on the agent leg, ``callconsent record``).
  ``EXEC StopMixMonitor`` run on the agent leg answers ``200 result=0`` and does nothing
  (capture ``s2``), so pause, resume and stop go through AMI with ``Channel`` = the customer
  leg's uniqueid and the ``MixMonitorID``. Starting from outside the call needs the opt-in
  ``write=system`` user; without it :attr:`AmiControl.start_refusal` says so.

Channel variables are set inheritable (``__CONSENT_STATUS``) so the agent leg sees them; they
are read back without the underscores (``GET VARIABLE __CONSENT_STATUS`` answers nothing).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import consent_ivr as c
from agi import ami as ami_mod
from agi.calls import AsteriskCall
from agi.context import Asterisk
from agi.session import AgiSession, ChannelGone, CommandTimeout
from recorder.live.port import CallGone, RecordingFile
from recorder.live.prompts import PromptFile

log = logging.getLogger("callconsent.agi")

MIXMON_VAR = "MIXMON_ID"  # MixMonitor's i() variable on the customer leg
_INHERITED = {
    "CONSENT_STATUS": "__CONSENT_STATUS",
    "CONSENT_ID": "__CONSENT_ID",
    "CONSENT_RECORDING_ID": "__CONSENT_RECORDING_ID",
}
SAMPLE_RATE = 8000  # MixMonitor's .wav and .raw are 8 kHz signed linear


def asterisk_variables(variables: Mapping[str, str], key: str) -> list[tuple[str, str]]:
    """Neutral names to Asterisk's; ``__CONSENT_CALL`` (the call key) goes with the decision
    so an agent leg whose linkedid changed (a transfer) still finds the call."""
    out = [(_INHERITED.get(name, name), value) for name, value in variables.items()]
    if "CONSENT_ID" in variables:
        out.append(("__CONSENT_CALL", key))
    return out


def mixmonitor_options(stereo: bool, beep_s: int) -> str:
    """``i(MIXMON_ID)`` keeps the handle; ``D`` interleaves both directions (left = from the
    customer, right = to the customer) — only into a ``.raw`` file; ``B(n)`` beeps."""
    return f"i({MIXMON_VAR})" + ("D" if stereo else "") + (f"B({beep_s})" if beep_s else "")


class _CustomerLeg:
    """What both controls do the same way: AMI actions on the customer leg."""

    def __init__(self, adapter: Asterisk, call: AsteriskCall, policy: c.Policy) -> None:
        self.adapter = adapter
        self.call = call
        self.policy = policy

    def recording_file(self, recording_id: str, stereo: bool) -> RecordingFile:
        spool = self.adapter.spool
        if stereo:
            return RecordingFile(spool.path_for(recording_id, "raw"), "raw", 2, SAMPLE_RATE)
        return RecordingFile(spool.path_for(recording_id, "wav"), "wav", 1, SAMPLE_RATE)

    @property
    def uid(self) -> str:
        if not self.call.customer_uid:
            raise CallGone("the customer leg of this call is not known")
        return self.call.customer_uid

    async def _ami(self, name: str, **headers: str) -> ami_mod.Message:
        ami = self.adapter.ami
        if ami is None:
            raise RuntimeError(f"{name} needs the AMI user ([asterisk] ami_user)")
        try:
            return await ami.action(name, **headers)
        except ami_mod.NoSuchChannel as exc:
            raise CallGone(str(exc)) from None

    async def _mixmon_id(self, pbx_ref: str | None) -> str:
        """Never act without the MixMonitorID: without it, every MixMonitor is hit."""
        if pbx_ref:
            return pbx_ref
        found = await self._ami("Getvar", Channel=self.uid, Variable=MIXMON_VAR)
        ref = str(found.get("Value") or "")
        if not ref:
            raise RuntimeError("the recording's MixMonitorID is unknown; refusing to act")
        return ref

    async def pause_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self._mute(pbx_ref, "1")

    async def resume_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self._mute(pbx_ref, "0")

    async def _mute(self, pbx_ref: str | None, state: str) -> None:
        ref = await self._mixmon_id(pbx_ref)
        await self._ami(
            "MixMonitorMute", Channel=self.uid, MixMonitorID=ref, Direction="both", State=state
        )

    async def _stop_by_ami(self, recording_id: str, pbx_ref: str | None) -> None:
        ref = await self._mixmon_id(pbx_ref)
        try:
            await self._ami("StopMixMonitor", Channel=self.uid, MixMonitorID=ref)
        except ami_mod.AmiError as exc:  # already stopped ("Could not stop monitoring channel")
            log.info("stop_mixmonitor_refused", extra={"kv": {"why": exc.message}})
        self.adapter.closer.recording_stopped(self.call, recording_id)

    async def stop_monitoring(self) -> None:
        """Consent no longer covers listening: out of the spy group, active listeners cut."""
        await self.set_variables_raw([("SPYGROUP", "")])
        if self.call.spies and self.adapter.ami is None:
            log.error("listeners_not_disconnected", extra={"kv": {"why": "no AMI user"}})
            return
        for spy_uid in list(self.call.spies):
            with contextlib.suppress(CallGone):
                await self._ami("Hangup", Channel=spy_uid)
            self.call.spies.pop(spy_uid, None)
            log.info("listener_disconnected", extra={"kv": {"call": self.call.key}})

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        await self.set_variables_raw(asterisk_variables(variables, self.call.key))

    async def set_variables_raw(self, pairs: list[tuple[str, str]]) -> None:
        for name, value in pairs:
            await self._ami("Setvar", Channel=self.uid, Variable=name, Value=value)

    async def hand_back(self) -> None:
        return None


class ChannelControl(_CustomerLeg):
    """An AGI session on the customer leg."""

    def __init__(
        self,
        adapter: Asterisk,
        call: AsteriskCall,
        policy: c.Policy,
        session: AgiSession,
        agent_channel: str | None = None,
        *,
        prompts_follow: bool = False,
    ) -> None:
        super().__init__(adapter, call, policy)
        self.session = session
        self.agent_channel = agent_channel  # who pressed the peer feature code, if anyone
        # the consent dialogue: a recording may start before its last prompt (thanks)
        self.prompts_follow = prompts_follow
        self._held: tuple[str, RecordingFile] | None = None

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        path = str(file.path.with_suffix(""))  # Asterisk picks the format by extension
        wait_s = file.size / (2 * SAMPLE_RATE) + self.adapter.options.command_timeout_s
        try:
            reply = await self.session.stream_file(path, prompt.barge_in, wait_s)
        except ChannelGone:
            return self._lost(prompt)
        except CommandTimeout:
            return c.PromptFailed(prompt.prompt_id, "Asterisk did not answer STREAM FILE")
        if reply.result is not None and reply.result > 0:
            digit = chr(reply.result)
            if digit in c.events.DTMF_DIGITS:
                return c.DigitReceived(digit)
        if reply.result == 0:
            return c.PromptFinished(prompt.prompt_id)
        if reply.result == -1:
            # hangup, or a file Asterisk could not play: the channel tells (HANGUP / 511)
            if await self._alive():
                return c.PromptFailed(prompt.prompt_id, "Asterisk could not play the file")
            return c.HungUp()
        return c.PromptFailed(prompt.prompt_id, f"unexpected reply {reply.text[:40]}")

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        try:
            reply = await self.session.wait_for_digit(collect.timeout_ms)
        except ChannelGone:
            return c.HungUp() if self.session.hung_up else c.InputTimedOut()
        except CommandTimeout:
            return c.InputTimedOut()
        digit = chr(reply.result) if reply.result is not None and reply.result > 0 else ""
        if digit and digit in c.events.DTMF_DIGITS:
            return c.DigitReceived(digit)
        if reply.result == -1 and not await self._alive():
            return c.HungUp()
        return c.InputTimedOut()

    def _lost(self, prompt: c.PlayPrompt) -> c.Event:
        if self.session.hung_up:
            return c.HungUp()
        # our side gave up (timeout, protocol error): the question could not be asked
        return c.PromptFailed(prompt.prompt_id, "the AGI session was lost")

    async def _alive(self) -> bool:
        try:
            await self.session.channel_status()
        except (ChannelGone, CommandTimeout):
            return False
        return not self.session.hung_up

    async def _agi(self, coro_fn, *args) -> object:  # type: ignore[no-untyped-def]
        try:
            return await coro_fn(*args)
        except (ChannelGone, CommandTimeout) as exc:
            raise CallGone(str(exc)) from None

    async def set_variables_raw(self, pairs: list[tuple[str, str]]) -> None:
        for name, value in pairs:
            await self._agi(self.session.set_variable, name, value)

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        self.call.files[recording_id] = file
        self.call.open_recordings.add(recording_id)
        if self.prompts_follow and self.policy.beep_interval_s:
            # The beep is a ChanSpy whisper, and on Asterisk 22.11 a whisper on a channel
            # stalls the file it plays (tests/fixtures/asterisk-real/agi-r3_*: the 1 s thanks
            # prompt had not ended 11 s later). So a beeping recording starts when the
            # dialogue hands the call back, after its last prompt.
            self._held = (recording_id, file)
            self.call.held.add(recording_id)
            return None
        return await self._mixmonitor(recording_id, file)

    async def hand_back(self) -> None:
        """The dialogue is over: start the recording held back for its beep. A recording
        started later on this session (an outbound call's agent answer) starts at once."""
        self.prompts_follow = False
        if self._held is None:
            return
        recording_id, file = self._held
        self._held = None
        try:
            ref = await self._mixmonitor(recording_id, file)
        finally:
            self.call.held.discard(recording_id)
        if ref:
            await self.adapter.recording_ref(self.call.key, recording_id, ref)

    async def _mixmonitor(self, recording_id: str, file: RecordingFile) -> str | None:
        options = mixmonitor_options(file.fmt == "raw", self.policy.beep_interval_s)
        await self._agi(self.session.exec, "MixMonitor", str(file.path), options)
        # the ID, and that it is ours: a MixMonitor that failed to start leaves the previous
        # recording's ID in the variable
        found = await self._agi(
            self.session.values,
            "${" + MIXMON_VAR + "}",
            "${MIXMONITOR(${" + MIXMON_VAR + "},filename)}",
        )
        ref, filename = found if isinstance(found, list) else ("", "")
        if not ref or filename != str(file.path):
            log.error("mixmonitor_not_started", extra={"kv": {"recording": recording_id}})
            return None
        return ref

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        if self.adapter.ami is not None:
            await self._stop_by_ami(recording_id, pbx_ref)
            return
        # on the customer leg itself, EXEC StopMixMonitor <id> works (capture s2b)
        ref = pbx_ref or await self._agi(self.session.value, "${" + MIXMON_VAR + "}")
        if not ref:
            raise RuntimeError("the recording's MixMonitorID is unknown; refusing to act")
        await self._agi(self.session.exec, "StopMixMonitor", str(ref))
        self.adapter.closer.recording_stopped(self.call, recording_id)

    async def allow_monitoring(self) -> None:
        await self.set_variables_raw([("SPYGROUP", self.adapter.options.spy_group)])

    async def reject(self, verb: str, reason: str) -> None:
        """We are on the customer leg: the agent who pressed the code hears a short tone.
        Sent in the background: the customer leg is out of the bridge while we run."""
        ami = self.adapter.ami
        if self.agent_channel and ami is not None and ami.connected:
            self.adapter.spawn(_tone_for(ami, self.agent_channel))


class AmiControl(_CustomerLeg):
    """Out of band: an agent's feature code on the agent leg, or the CLI through the daemon."""

    def __init__(
        self,
        adapter: Asterisk,
        call: AsteriskCall,
        policy: c.Policy,
        agent_session: AgiSession | None = None,
        language: str = "en",
    ) -> None:
        super().__init__(adapter, call, policy)
        self.agent_session = agent_session
        self.language = language

    @property
    def start_refusal(self) -> str | None:
        """Why this control cannot start a recording (None: it can)."""
        if self.adapter.ami_system is None:
            return (
                "starting a recording from outside the call needs the opt-in write=system AMI "
                "user ([asterisk] ami_system_user); agents start with their feature code"
            )
        return None

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        raise CallGone("no media path out of band")

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        raise CallGone("no media path out of band")

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        system = self.adapter.ami_system
        if system is None:
            raise RuntimeError(self.start_refusal)
        options = mixmonitor_options(file.fmt == "raw", self.policy.beep_interval_s)
        self.call.files[recording_id] = file
        self.call.open_recordings.add(recording_id)
        try:
            reply = await system.action(
                "MixMonitor", Channel=self.uid, File=str(file.path), Options=options
            )
        except ami_mod.NoSuchChannel as exc:
            raise CallGone(str(exc)) from None
        return str(reply.get("MixMonitorID") or "") or None

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self._stop_by_ami(recording_id, pbx_ref)

    async def allow_monitoring(self) -> None:
        await self.set_variables_raw([("SPYGROUP", self.adapter.options.spy_group)])

    async def reject(self, verb: str, reason: str) -> None:
        if self.agent_session is not None:
            await play_agent_tone(self.adapter, self.agent_session, "agent-refused", self.language)


async def _tone_for(ami: ami_mod.AmiClient, channel: str) -> None:
    # "Async: false": panoramisk reads "…successfully queued" as the start of an event list
    # (as for Originate) and fails on an action without an Async header
    with contextlib.suppress(ami_mod.AmiError, ami_mod.AmiUnavailable, TimeoutError):
        await ami.action("PlayDTMF", Channel=channel, Digit="#", Duration="400", Async="false")


async def play_agent_tone(adapter: Asterisk, session: AgiSession, name: str, language: str) -> None:
    """A short prompt for the agent (refused, done, the consent status); skipped if absent."""
    path = agent_prompt(adapter.prompt_dir, name, language)
    if path is None:
        return
    with contextlib.suppress(ChannelGone, CommandTimeout):
        await session.stream_file(str(path.with_suffix("")), "", adapter.options.command_timeout_s)


def agent_prompt(prompt_dir: Path, name: str, language: str) -> Path | None:
    for lang in (language, "en"):
        path = prompt_dir / lang / f"{name}.wav"
        if path.is_file():
            return path
    return None
