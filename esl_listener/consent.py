"""The consent dialogue on an outbound-socket session: the :class:`SessionControl` that performs
the consent machine's actions on one FreeSWITCH channel, and the session handler that runs it.

A session, as the captures show FreeSWITCH wants it (``tests/fixtures/freeswitch``):

1. ``connect`` (done by the server): the reply holds the channel's data; the campaign is
   ``variable_socket_path`` (``consent/<campaign>`` from the dialplan's socket address).
2. ``myevents``, then ``event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP``
   (``myevents`` does not include them), then ``linger`` (after a hangup FreeSWITCH keeps the
   socket until we close it, so no completion is lost).
3. ``answer``; the question with ``play_and_get_digits``: the digit comes back as
   ``variable_callconsent_digit`` of its CHANNEL_EXECUTE_COMPLETE; no input is
   ``variable_read_result: failure`` with no digit; a hangup is ``Answer-State: hangup``.
4. On accept, first the recording: ``api uuid_record <leg> start`` on this socket (into our
   spool, named by our recording id, ``RECORD_PRE_BUFFER_FRAMES=0``); an ``api`` runs at once
   where each ``execute`` waits for a media frame (20 ms). Then ``export`` of
   ``consent_status``, ``consent_id``, ``consent_recording_id`` (``set`` would not reach the
   agent's leg), thanks / declined.
5. On consent, the caller's withdraw key (policy ``withdraw_digit``) is bound on this leg with
   ``bind_digit_action``: it outlives the session and fires ``CUSTOM consent::withdraw``,
   which the inbound connection hands to the consent machine as ``CallerWithdrew``.
6. ``exit``: FreeSWITCH answers ``+OK bye``, sends a disconnect notice and closes; the call is
   *not* hung up, the dialplan goes on to the agent. We never hang up a caller.

``+OK`` to a ``sendmsg`` proves nothing (a dead channel says it too); only events do.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import consent_ivr as c
from esl_listener import commands as cmd
from esl_listener.calls import CallRegistry
from esl_listener.connection import ChannelGone, CommandTimeout, ConnectionClosed, EslConnection
from esl_listener.fscall import FsCall
from esl_listener.protocol import Event, Frame
from recorder.live.callbook import CallBook
from recorder.live.port import CallGone, RecordingFile
from recorder.live.prompts import PromptFile

log = logging.getLogger("callconsent.esl.consent")

_CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
EVENTS = "event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP"
#: what the dialogue reads of its channel's events (a barge-in is a DTMF before PLAYBACK_STOP);
#: the connection parses these and its own (completions, hangups), and drops the rest unparsed
TRACED = ("DTMF", "PLAYBACK_STOP")


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the ``connect`` reply tells us about the channel, read defensively: every value a
    caller or trunk can influence is either validated or kept out of commands."""

    unique_id: str
    call_uuid: str
    campaign: str
    direction: str  # inbound: consent/<campaign>; outbound: outbound/<campaign> (agent's leg)
    number: str | None
    withheld: bool
    language: str | None
    agent: str | None
    sample_rate: int | None

    @classmethod
    def from_connect(cls, frame: Frame) -> ChannelInfo:
        h = frame.headers
        unique_id = cmd.uuid(h.get("Unique-ID", ""))
        kind, _, campaign = (h.get("variable_socket_path") or "consent/default").partition("/")
        if not _CAMPAIGN.match(campaign):
            log.warning(
                "campaign_invalid", extra={"kv": {"channel": unique_id, "using": "default"}}
            )
            campaign = "default"
        outbound = kind == "outbound"
        if outbound:
            number = h.get("variable_callconsent_number") or h.get("Caller-Destination-Number")
        else:
            number = h.get("Caller-Caller-ID-Number")
        language = h.get("variable_default_language") or h.get("variable_language")
        agent = h.get("variable_callconsent_agent") if outbound else None
        rate = h.get("Channel-Read-Codec-Rate", "")
        return cls(
            unique_id=unique_id,
            call_uuid=cmd.uuid(h.get("Channel-Call-UUID") or unique_id),
            campaign=campaign,
            direction="outbound" if outbound else "inbound",
            number=number,
            withheld=not outbound and h.get("Caller-Privacy-Hide-Number") == "true",
            language=language if language and _LANGUAGE.match(language) else None,
            agent=agent if agent and _TOKEN.match(agent) else None,
            sample_rate=int(rate) if rate.isdigit() else None,
        )


class SessionControl:
    """A call's :class:`~recorder.live.callbook.CallControl` over its outbound-socket session."""

    def __init__(
        self,
        conn: EslConnection,
        info: ChannelInfo,
        call: FsCall,
        registry: CallRegistry,
        policy: c.Policy,
    ) -> None:
        self.conn = conn
        self.info = info
        self.call = call
        self.registry = registry
        self.policy = policy
        self.handed_back = False
        self._pending: c.Event | None = None  # the answer play_and_get_digits already heard
        self._trace: list[tuple[str, str]] = []
        conn.add_listener(self._on_event, TRACED)

    def _on_event(self, event: Event) -> None:
        if event.unique_id != self.info.unique_id:
            return
        if event.name == "DTMF":
            self._trace.append(("dtmf", event.get("DTMF-Digit", "") or ""))
        elif event.name == "PLAYBACK_STOP":
            self._trace.append((event.name, ""))

    async def _run(
        self, app: str, arg: str | None = None, timeout_s: float | None = None
    ) -> Event | None:
        """Execute; ``None`` if the channel is (or goes) away."""
        try:
            event = await self.conn.execute(app, arg, timeout_s=timeout_s)
        except (ChannelGone, ConnectionClosed):
            return None
        return None if event.get("Answer-State") == "hangup" else event

    async def _must(self, app: str, arg: str | None = None) -> Event:
        try:
            event = await self._run(app, arg)
        except CommandTimeout as exc:
            raise CallGone(str(exc)) from None
        if event is None:
            raise CallGone(f"channel {self.info.unique_id} hung up")
        return event

    # -- the dialogue ----------------------------------------------------------------------

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        if self.info.direction == "outbound":
            return c.PromptFailed(prompt.prompt_id, "no prompt is played to an agent's leg")
        try:
            path = cmd.path(file.path)
            limit = 15 + file.size / 8000 + self.policy.digit_timeout_ms / 1000
            if prompt.prompt_id == "consent":
                return await self._ask(prompt, path, limit)
            if prompt.barge_in:
                await self._must("set", f"playback_terminators={cmd.terminators(prompt.barge_in)}")
            try:
                event = await self._run("playback", path, limit)
            finally:
                if prompt.barge_in and not self.conn.channel_gone:
                    await self._run("set", "playback_terminators=none")
        except cmd.UnsafeValue as exc:
            return c.PromptFailed(prompt.prompt_id, str(exc))
        except CommandTimeout:
            return c.PromptFailed(prompt.prompt_id, "FreeSWITCH did not finish the prompt")
        except CallGone:
            return c.HungUp()
        if event is None:
            return c.HungUp()
        if event.get("Application-Response") != "FILE PLAYED":
            return c.PromptFailed(prompt.prompt_id, event.get("Application-Response") or "")
        used = event.get("variable_playback_terminator_used") or ""
        if prompt.barge_in and used and used in prompt.barge_in:
            return c.DigitReceived(used)
        return c.PromptFinished(prompt.prompt_id)

    async def _ask(self, prompt: c.PlayPrompt, path: str, limit: float) -> c.Event:
        """The question and the wait for a key in one ``play_and_get_digits``. A key pressed
        while the prompt played is a barge-in (DTMF before PLAYBACK_STOP); one pressed after
        it is the answer to the collect that the machine asks for next."""
        self._trace.clear()
        event = await self._run(
            "play_and_get_digits",
            cmd.play_and_get_digits(path, self.policy.digit_timeout_ms),
            limit,
        )
        if event is None:
            return c.HungUp()
        digit = event.get(f"variable_{cmd.DIGIT_VAR}") or ""
        if event.get("variable_read_result") == "success" and len(digit) == 1:
            stops = [i for i, (k, _) in enumerate(self._trace) if k == "PLAYBACK_STOP"]
            presses = [i for i, (k, v) in enumerate(self._trace) if k == "dtmf" and v == digit]
            barged = bool(presses) and (not stops or presses[0] < stops[0])
            if barged:
                return c.DigitReceived(digit)
            self._pending = c.DigitReceived(digit)
        else:
            self._pending = c.InputTimedOut()
        return c.PromptFinished(prompt.prompt_id)

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        pending, self._pending = self._pending, None
        return pending if pending is not None else c.InputTimedOut()

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            if name in cmd.CHANNEL_VARIABLES:  # export: the agent's leg must see it too
                await self._must("export", cmd.variable(cmd.CHANNEL_VARIABLES[name], value))

    def recording_file(self, recording_id: str, stereo: bool) -> RecordingFile:
        path = self.registry.spool.path_for(recording_id)
        return RecordingFile(path, "wav", 2 if stereo else 1, self.info.sample_rate)

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        """``uuid_record … start`` over this session's own socket: an ``api`` runs at once,
        where an ``execute`` (``record_session``) waits for the channel's next media frame,
        and each frame lost is 20 ms of what the caller says right after the key. FreeSWITCH
        answers ``+OK Success`` once the recording runs (RECORD_START follows the reply)."""
        if self.call.customer_uuid != self.info.unique_id:  # an agent's leg: record later
            return await self.registry.control(self.call).start_recording(recording_id, file)
        path = str(file.path)
        command = cmd.uuid_record(self.info.unique_id, "start", path, file.channels == 2)
        try:
            reply = await self.conn.api(command)
        except (ChannelGone, ConnectionClosed, CommandTimeout) as exc:
            raise CallGone(f"channel {self.info.unique_id}: {exc}") from None
        if "Cannot locate session" in reply.text:
            raise CallGone(f"FreeSWITCH: {reply.first_line}")
        if not reply.ok:
            log.error(
                "recording_not_started",
                extra={
                    "kv": {
                        "call": self.call.key,
                        "recording": recording_id,
                        "reply": reply.first_line,
                    }
                },
            )
            await self.registry.not_started(recording_id)
            return None
        self.registry.recording_started(self.call, recording_id, path)
        return path

    async def pause_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self.registry.control(self.call).pause_recording(recording_id, pbx_ref)

    async def resume_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self.registry.control(self.call).resume_recording(recording_id, pbx_ref)

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        await self.registry.control(self.call).stop_recording(recording_id, pbx_ref)

    async def allow_monitoring(self) -> None:
        if self.call.customer_uuid == self.info.unique_id:  # the group sits on the customer leg
            await self._must("set", cmd.variable("eavesdrop_group", self.registry.eavesdrop_group))

    async def stop_monitoring(self) -> None:
        if self.call.customer_uuid == self.info.unique_id:
            await self._run("unset", "eavesdrop_group")

    async def reject(self, verb: str, reason: str) -> None:
        return None  # no agent is on the line during the dialogue; the refusal is logged

    async def bind_withdraw_key(self, status: c.ConsentStatus | None) -> None:
        """The caller's withdraw key, on the customer's leg only and only once they consented
        (the agent's leg never gets it; an agent pressing the key sends it to the caller)."""
        key = self.policy.withdraw_digit
        if key is None or status is not c.ConsentStatus.GRANTED:
            return
        if self.info.direction != "inbound" or self.call.customer_uuid != self.info.unique_id:
            return
        if not self.registry.hears_withdrawals():
            # its CUSTOM event would reach nobody: the key would do nothing but swallow itself
            log.error(
                "withdraw_key_not_bound",
                extra={
                    "kv": {
                        "call": self.call.key,
                        "why": "the ESL user may not receive CUSTOM consent::withdraw "
                        "(see esl_events_refused)",
                    }
                },
            )
            return
        try:
            await self._must("bind_digit_action", cmd.withdraw_binding(key))
        except cmd.UnsafeValue as exc:
            log.error("withdraw_key_unusable", extra={"kv": {"error": str(exc)}})
            return
        except CallGone:
            return
        log.info("withdraw_key_bound", extra={"kv": {"call": self.call.key}})

    async def hand_back(self) -> None:
        self.handed_back = True


class ConsentSessions:
    """The outbound server's session handler: one consent dialogue per connection."""

    def __init__(self, calls: CallBook, registry: CallRegistry) -> None:
        self.calls = calls
        self.registry = registry

    async def __call__(self, conn: EslConnection, channel: Frame) -> None:
        info = ChannelInfo.from_connect(channel)
        for line in ("myevents", EVENTS, "linger"):
            await conn.send(line)
        inbound = info.direction == "inbound"
        call = self.registry.track(
            info.call_uuid,
            direction=info.direction,
            session_uuid=info.unique_id,
            customer_uuid=info.unique_id if inbound else None,
        )
        live = await self.calls.open(
            pbx="freeswitch",
            pbx_call_id=info.call_uuid,
            campaign=info.campaign,
            direction=info.direction,
            number=info.number,
            number_withheld=info.withheld,
            channel_language=info.language,
            pbx_channel_id=info.unique_id,
            agent=info.agent,
            control=self.registry.control(call),
        )
        control = SessionControl(conn, info, call, self.registry, live.machine.policy)
        if live.machine.phase is not c.Phase.READY:
            # the call came back through the consent extension (a transfer): asked already
            log.info("consent_already_decided", extra={"kv": {"call": live.ref.id}})
            if live.machine.decided and live.status is not None:
                await control.set_variables(
                    {"CONSENT_STATUS": live.status.value, "CONSENT_ID": live.machine.consent_id}
                )
        else:
            if inbound:
                await control._run("set", "playback_terminators=none")
                await control._run("answer")
            await live.run_dialogue(control)
        if live.machine.phase in (c.Phase.CONFIRMING, c.Phase.CONNECTED) and not conn.channel_gone:
            await control.bind_withdraw_key(live.status)
        if conn.channel_gone:
            call.hung_up = True
            await live.hung_up()
            self.registry.maybe_forget(call)
        if not conn.closed.is_set():
            await conn.send("exit")
