"""What we know of each call on FreeSWITCH beyond its consent machine, and what the inbound
event stream tells us about it: recordings closing, legs hanging up, bridges, agent feature
codes, the caller's withdraw key and supervisors listening in.

Why the inbound connection and not the outbound socket: the outbound session ends with our
``exit`` (the call goes on to an agent), long before the recording stops. So ``RECORD_STOP``
(the only moment the WAV header is valid), the customer's ``CHANNEL_HANGUP_COMPLETE``, the
``CHANNEL_BRIDGE`` to an agent, the agent's ``CUSTOM consent::agent_cmd`` and the caller's
``CUSTOM consent::withdraw`` all arrive on the inbound connection, for every channel, and are
routed here by ``Channel-Call-UUID`` (the agent leg carries the customer's while bridged) and by
the channel's own ``Unique-ID``. What we send back is in :mod:`esl_listener.remote`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import consent_ivr as c
from esl_listener.connection import ApiReply, EslError
from esl_listener.fscall import FsCall
from esl_listener.marks import DbMarks
from esl_listener.protocol import Event
from esl_listener.remote import RemoteControl
from recorder.finalize.spool import Spool
from recorder.live import callbook
from recorder.live.callbook import CallBook, LiveCall
from recorder.live.orphans import OpenCall, Orphans
from recorder.store.ledger import LedgerError

log = logging.getLogger("callconsent.esl.calls")

PBX = "freeswitch"
AGENT_CMD = "consent::agent_cmd"
LISTEN = "consent::listen"
WITHDRAW = "consent::withdraw"
WITHDRAWN_VAR = "callconsent_withdrawn"  # set by the shipped callconsent_withdraw extension
#: CUSTOM ``cc_cmd`` values the shipped feature codes send; ``mask`` toggles mask/unmask.
AGENT_VERBS = {
    "start": "start",
    "stop": "stop",
    "discard": "discard",
    "pause": "pause",
    "resume": "resume",
    "unmask": "resume",
}
_ACTOR = re.compile(r"^[A-Za-z0-9_.@+/-]{1,48}$")

ApiPort = Callable[[str], Awaitable[ApiReply]]


class CallRegistry:
    """The FreeSWITCH calls of this daemon, and the handling of inbound events about them."""

    def __init__(
        self,
        calls: CallBook,
        spool: Spool,
        api: ApiPort,
        *,
        eavesdrop_group: str = "consented",
        forget_after_s: float = 120.0,
    ) -> None:
        self.calls = calls
        self.spool = spool
        self.api = api
        self.eavesdrop_group = eavesdrop_group
        self.forget_after_s = forget_after_s
        self._by_key: dict[str, FsCall] = {}
        self._by_leg: dict[str, FsCall] = {}
        self._by_listener: dict[str, FsCall] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.orphans = Orphans(calls, PBX)  # open calls of a daemon that restarted
        # the withdraw extension's mod_db marks (read through self.api, whatever it is now)
        calls.marks[PBX] = DbMarks(lambda command: self.api(command))
        # whether a caller's withdraw key can reach us (the service asks its inbound client):
        # a key whose event we may never receive would swallow the withdrawal
        self.hears_withdrawals: Callable[[], bool] = lambda: True

    # -- bookkeeping -----------------------------------------------------------------------

    def track(
        self,
        key: str,
        *,
        direction: str = "inbound",
        session_uuid: str | None = None,
        customer_uuid: str | None = None,
    ) -> FsCall:
        call = self._by_key.get(key)
        if call is None:
            call = self._by_key[key] = FsCall(key, direction, customer_uuid, session_uuid)
        if customer_uuid:
            self._set_customer(call, customer_uuid)
        if session_uuid:
            call.session_uuid = session_uuid
            self._by_leg.setdefault(session_uuid, call)
        return call

    def get(self, key: str) -> FsCall | None:
        return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_key)

    def _set_customer(self, call: FsCall, leg: str) -> None:
        call.customer_uuid = leg
        self._by_leg[leg] = call

    def recording_started(self, call: FsCall, recording_id: str, path: str) -> None:
        call.recordings[recording_id] = path

    async def not_started(self, recording_id: str) -> None:
        """FreeSWITCH refused to record: nothing is being written, so the store must not wait
        for a file (the recording is marked discarded, with the reason)."""
        await self.calls.ledger.discard_async(recording_id, "pbx_refused_start", None)

    def control(self, call: FsCall, agent_uuid: str | None = None) -> RemoteControl:
        return RemoteControl(self, call, agent_uuid)

    def _drop(self, call: FsCall) -> None:
        self._by_key.pop(call.key, None)
        for leg in (call.customer_uuid, call.session_uuid, *call.listeners):
            if leg:
                self._by_leg.pop(leg, None)
                self._by_listener.pop(leg, None)
        if (timer := self._timers.pop(call.key, None)) is not None:
            timer.cancel()
        self.calls.forget(PBX, call.key)

    def maybe_forget(self, call: FsCall) -> None:
        """Forget a hung-up call once FreeSWITCH closed its recordings (``RECORD_STOP`` comes
        before the customer's ``CHANNEL_HANGUP_COMPLETE`` in every capture; if one never comes,
        the call is forgotten anyway after ``forget_after_s`` and the finalizer's repair rule
        deals with the file)."""
        if not call.hung_up:
            return
        if not call.open_recordings:
            self._drop(call)
        elif call.key not in self._timers:
            self._timers[call.key] = asyncio.get_running_loop().call_later(
                self.forget_after_s, self._give_up, call
            )

    def _give_up(self, call: FsCall) -> None:
        log.warning(
            "record_stop_missing",
            extra={"kv": {"call": call.key, "recordings": ",".join(sorted(call.open_recordings))}},
        )
        self._timers.pop(call.key, None)
        self._drop(call)

    # -- inbound events ----------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        name = event.name
        try:
            if name == "RECORD_STOP":
                await self._record_stop(event)
            elif name == "CHANNEL_HANGUP_COMPLETE":
                await self._hangup(event)
            elif name == "CHANNEL_BRIDGE":
                await self._bridge(event)
            elif name == "CUSTOM" and event.subclass == AGENT_CMD:
                await self._agent_command(event)
            elif name == "CUSTOM" and event.subclass == WITHDRAW:
                await self._withdraw(event)
            elif name == "CUSTOM" and event.subclass == LISTEN:
                self._listen(event)
        except (c.IllegalTransition, LedgerError) as exc:
            log.error("esl_event_refused", extra={"kv": {"event": name, "error": str(exc)}})

    def event_key(self, event: Event) -> str:
        """The call an event belongs to (a shard key for ordered handling)."""
        if event.subclass == LISTEN:
            return event.get("cc_target", "") or event.call_uuid
        return event.call_uuid

    async def _record_stop(self, event: Event) -> None:
        path = Path(event.get("Record-File-Path", "") or "")
        parsed = self.spool.parse_name(path.name)
        if path.parent != self.spool.path or parsed is None:
            return  # not one of ours (someone else's recording on this PBX)
        rid = parsed[0]
        call = self._by_key.get(event.call_uuid) or self._by_leg.get(event.unique_id)
        live = self.calls.find(PBX, call.key if call else event.call_uuid)
        log.info(
            "record_stop",
            extra={"kv": {"recording": rid, "cause": event.get("Record-Completion-Cause")}},
        )
        if live is not None:
            await live.recording_closed(rid)
        else:  # a call from before a restart: the store still learns the file is final
            await self.calls.ledger.recording_closed_async(rid)
        if call is not None:
            call.closed.add(rid)
            self.maybe_forget(call)

    async def recheck(self) -> None:
        """After the inbound connection came (back): FreeSWITCH sent nothing while we were
        away, so ask about every call we hold. A customer leg gone means the call ended
        (its recordings are then adopted by the finalizer once their files are final); a
        leg marked ``callconsent_withdrawn`` by the shipped withdraw extension means the
        caller withdrew and we never heard the event. Then the store's open calls this
        daemon does not hold (it restarted): see :mod:`recorder.live.orphans`."""
        await self._recheck_held()
        await self.orphans.sweep(self._channel_exists, self._orphan_alive)

    async def _orphan_alive(self, orphan: OpenCall) -> None:
        """A call from before a daemon restart, still up: did its caller withdraw meanwhile?"""
        if not await self._marked_withdrawn(orphan.pbx_call_id):
            return
        live = await self.calls.lookup(PBX, orphan.pbx_call_id)  # rebuilt from the store
        if live is None or live.ref.direction != "inbound":
            return  # the key is bound on inbound customer legs only
        call = self._by_key.get(orphan.pbx_call_id) or self.track(
            orphan.pbx_call_id, direction="inbound", customer_uuid=orphan.pbx_call_id
        )
        await self._withdrawn_while_away(call)

    async def _channel_exists(self, leg: str) -> bool | None:
        """``uuid_exists``: None when FreeSWITCH did not say (gone again, or not allowed)."""
        try:
            reply = await self.api(f"uuid_exists {leg}")
        except (EslError, TimeoutError) as exc:  # gone again: the next login rechecks
            log.warning("esl_recheck_stopped", extra={"kv": {"error": str(exc)}})
            return None
        found = {"true": True, "false": False}.get(reply.first_line)
        if found is None:
            log.error(
                "esl_recheck_refused",
                extra={"kv": {"reply": reply.first_line, "hint": "allow uuid_exists, uuid_getvar"}},
            )
        return found

    async def _recheck_held(self) -> None:
        for call in list(self._by_key.values()):
            leg = call.customer_uuid or call.session_uuid
            if call.hung_up or not leg:
                continue
            found = await self._channel_exists(leg)
            if found is None:
                return
            try:
                if not found:
                    log.info("call_ended_while_esl_was_away", extra={"kv": {"call": call.key}})
                    await self._end(call)
                elif call.customer_uuid and await self._marked_withdrawn(leg):
                    await self._withdrawn_while_away(call)
            except Exception:  # one call's trouble must not leave the others unchecked
                log.exception("esl_recheck_failed", extra={"kv": {"call": call.key}})

    async def _marked_withdrawn(self, leg: str) -> bool:
        try:
            reply = await self.api(f"uuid_getvar {leg} {WITHDRAWN_VAR}")
        except (EslError, TimeoutError):
            return False  # the next login asks again
        return reply.first_line == "true"

    async def _withdrawn_while_away(self, call: FsCall) -> None:
        live = self.calls.find(PBX, call.key)
        if live is None or live.machine.status is not c.ConsentStatus.GRANTED:
            return  # heard already (withdrawn), or nothing to withdraw
        if live.machine.phase not in (c.Phase.CONFIRMING, c.Phase.CONNECTED):
            return
        log.info("caller_withdrew_while_esl_was_away", extra={"kv": {"call": call.key}})
        if live.control is None:
            live.control = self.control(call)
        # the recording ran on from the key until now: under on_withdrawal = "stop" it is
        # not kept (recorder.live.withdrawals); the mark is removed once the store has it
        await callbook.learn_withdrawal(live, None, self.control(call))
        await live.consult_withdraw_marks()

    async def _end(self, call: FsCall) -> None:
        call.hung_up = True
        if (live := self.calls.find(PBX, call.key)) is not None:
            await live.hung_up()
        self.maybe_forget(call)

    async def _hangup(self, event: Event) -> None:
        leg = event.unique_id
        if (call := self._by_listener.pop(leg, None)) is not None:
            call.listeners.discard(leg)
            return
        call = self._by_leg.get(leg)
        if call is None:
            if (live := self.calls.find(PBX, leg)) is not None:  # restored, never tracked
                await live.hung_up()
                self.calls.forget(PBX, leg)
            elif self.orphans.watches(leg):  # from before a daemon restart, never restored
                await self.orphans.channel_gone(leg)
            return
        ends_call = leg == call.customer_uuid or (
            call.customer_uuid is None and leg == call.session_uuid
        )
        if not ends_call:
            return
        await self._end(call)

    async def _bridge(self, event: Event) -> None:
        call = self._by_key.get(event.call_uuid) or self._by_leg.get(event.unique_id)
        if call is None:
            return
        other = event.get("Other-Leg-Unique-ID", "") or ""
        if call.direction == "outbound" and event.unique_id == call.session_uuid and other:
            self._set_customer(call, other)  # the agent dialled out; the far end is the customer
        live = self.calls.find(PBX, call.key)
        if live is None or live.machine.phase not in (c.Phase.CONFIRMING, c.Phase.CONNECTED):
            return
        if live.control is None:
            live.control = self.control(call)
        agent = (
            _actor(event.get("Other-Leg-Destination-Number"))
            if call.direction == "inbound"
            else None
        )
        await live.feed(c.AgentAnswered(agent))

    async def _agent_command(self, event: Event) -> None:
        raw = event.get("cc_cmd", "") or ""
        agent_leg = event.unique_id
        actor = _actor(event.get("cc_agent")) or _actor(event.get("Channel-Name")) or "agent"
        key = event.call_uuid
        live = await self.calls.lookup(PBX, key)
        if live is None or (raw not in AGENT_VERBS and raw != "mask"):
            log.warning("agent_command_ignored", extra={"kv": {"call": key, "cmd": raw[:20]}})
            await self.control(FsCall(key), agent_leg).reject(raw[:20], "no such call or command")
            return
        outbound = live.ref.direction == "outbound"
        call = self._by_key.get(key) or self.track(  # decided before a daemon restart
            key,
            direction=live.ref.direction,
            customer_uuid=(event.get("Other-Leg-Unique-ID") or None) if outbound else key,
        )
        if agent_leg and agent_leg == call.customer_uuid:
            # the codes are bound on the agent's leg only; a code from the customer's own leg
            # means a misconfigured dialplan, and the customer must never control recording
            log.warning("agent_command_from_customer_leg", extra={"kv": {"call": key, "cmd": raw}})
            return
        verb = AGENT_VERBS.get(raw) or _toggle(live)
        if live.control is None:
            live.control = self.control(call)
        log.info("agent_command", extra={"kv": {"call": key, "cmd": raw, "verb": verb}})
        await live.agent(verb, actor, control=self.control(call, agent_leg))

    async def _withdraw(self, event: Event) -> None:
        """The caller's withdraw key (bound on the customer's leg by the consent session). The
        consent machine decides what follows: stop, discard under ``stop_and_discard``, no
        more listen-in; a key from any other leg is refused, so no agent can withdraw for them."""
        key = event.call_uuid
        live = await self.calls.lookup(PBX, key)
        if live is None or live.machine.phase not in (c.Phase.CONFIRMING, c.Phase.CONNECTED):
            log.warning("withdraw_ignored", extra={"kv": {"call": key, "why": "no live call"}})
            return
        call = self._by_key.get(key) or self.track(  # decided before a daemon restart
            key,
            direction=live.ref.direction,
            customer_uuid=key if live.ref.direction == "inbound" else None,
        )
        if not event.unique_id or event.unique_id != call.customer_uuid:
            log.warning("withdraw_from_another_leg", extra={"kv": {"call": key}})
            return
        if live.control is None:
            live.control = self.control(call)
        log.info("caller_withdraw_key", extra={"kv": {"call": key}})
        await live.feed(c.CallerWithdrew(), self.control(call))

    def _listen(self, event: Event) -> None:
        target = event.get("cc_target", "") or ""
        call = self._by_key.get(target) or self._by_leg.get(target)
        if call is not None and event.unique_id:
            call.listeners.add(event.unique_id)
            self._by_listener[event.unique_id] = call


def _toggle(live: LiveCall) -> str:
    """``*42`` masks a running recording and unmasks a masked one."""
    rid = live.machine.current_recording
    state = live.machine.recordings.get(rid) if rid else None
    return "resume" if state is c.RecordingState.PAUSED else "pause"


def _actor(value: str | None) -> str | None:
    return value if value and _ACTOR.match(value) else None
