"""The Asterisk adapter's shared state and its routes.

Every FastAGI URL the shipped dialplan uses, by path (the campaign comes from the path
only: ``agi_arg_N`` come after the caller fields and can be forged, capture ``s7``):

=============================== ============================================================
``consent/<campaign>``          inbound consent dialogue on the customer leg
``outbound/<campaign>/<agent>`` registers an outbound call, on the agent's channel
``answer``                      a leg was answered: the outbound customer (dialogue), the
                                inbound customer leg in a Queue (agent answered), or the agent
                                leg (whisper; ``record_from = agent_answer``)
``agent/<verb>``                an agent's feature code: start, pause (toggles), stop, discard
``withdraw/<key>``              the caller's withdraw key (``0``-``9``, ``star``, ``hash``)
=============================== ============================================================
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

import consent_ivr as c
from agi import agent, consent
from agi.ami import AmiClient, AmiError, AmiUnavailable, Message, NoSuchChannel
from agi.calls import CallRegistry
from agi.closure import Closer
from agi.context import AsteriskOptions
from agi.control import AmiControl
from agi.protocol import AgiEnvironment
from agi.server import Handler
from recorder.finalize.spool import Spool
from recorder.live import callbook
from recorder.live.callbook import CallBook, LiveCall
from recorder.live.orphans import OpenCall, Orphans
from recorder.live.port import RecordingFile
from recorder.live.withdrawals import SpoolMarks
from recorder.store.models import ConsentRecord, Recording

log = logging.getLogger("callconsent.agi")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # campaigns, as in consent_ivr.policy
AGENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
PBX = "asterisk"
WITHDRAWN_VAR = "CONSENT_WITHDRAWN"  # set by callconsent-withdraw before its AGI
WITHDRAW_KEYS = {**{d: d for d in "0123456789"}, "star": "*", "hash": "#"}


class AsteriskAdapter:
    """The shared state the routes act on (it is an :class:`agi.context.Asterisk`) and the
    table that maps each FastAGI path to its route."""

    def __init__(
        self,
        calls: CallBook,
        spool: Spool,
        options: AsteriskOptions,
        prompt_dir: Path,
        *,
        ami: AmiClient | None = None,
        ami_system: AmiClient | None = None,
    ) -> None:
        self.calls = calls
        self.spool = spool
        self.options = options
        self.prompt_dir = prompt_dir
        self.ami = ami
        self.ami_system = ami_system
        self.registry = CallRegistry()
        # open calls of a daemon that restarted (their files handed on once they end)
        self.orphans = Orphans(calls, PBX, options.header_wait_s)
        calls.marks[PBX] = SpoolMarks(spool.path)  # callconsent-withdraw's FILE() marks
        self.closer = Closer(calls, self.registry, options.header_wait_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    # -- FastAGI routes ----------------------------------------------------------------------

    def route(self, env: AgiEnvironment) -> Handler | None:
        parts = env.script.split("/")
        match parts:
            case ["consent", campaign] if NAME.match(campaign):
                return functools.partial(consent.inbound, self, campaign=campaign)
            case ["outbound", campaign, agent_id] if NAME.match(campaign) and AGENT.match(agent_id):
                return functools.partial(consent.outbound, self, campaign=campaign, agent=agent_id)
            case ["answer"]:
                return functools.partial(consent.answered, self)
            case ["withdraw", key] if key in WITHDRAW_KEYS:
                return functools.partial(consent.withdraw, self, digit=WITHDRAW_KEYS[key])
            case ["agent", verb] if verb in agent.VERBS:
                return functools.partial(agent.command, self, verb=verb)
        return None

    # -- AMI events ------------------------------------------------------------------------

    def on_ami_event(self, message: Message) -> None:
        event = str(message.get("Event", ""))
        if event == "Hangup":
            uid = str(message.get("Uniqueid", ""))
            call = self.registry.by_customer(uid)
            if call is not None:
                self.closer.channel_gone(call.key)
            elif self.orphans.watches(uid):
                self.spawn(self.orphans.channel_gone(uid))
            self.registry.spy_gone(uid)
        elif event == "ChanSpyStart":
            call = self.registry.by_customer(str(message.get("SpyeeUniqueid", "")))
            if call is not None:
                spy_uid, channel = message.get("SpyerUniqueid", ""), message.get("SpyerChannel")
                self.registry.spy_started(call, str(spy_uid), str(channel))
                log.info("listener_started", extra={"kv": {"call": call.key}})
        elif event == "ChanSpyStop":
            if self.registry.by_customer(str(message.get("SpyeeUniqueid", ""))) is not None:
                self.registry.spy_gone(str(message.get("SpyerUniqueid", "")))
        elif event.startswith("MixMonitor"):
            # no ID, no file name (capture s1); logged, never relied upon
            log.debug("ami_event", extra={"kv": {"event": event, "uid": message.get("Uniqueid")}})

    async def restore(self, live: LiveCall) -> None:
        """A call decided before this daemon (re)started, rebuilt from the store: its customer
        leg (the decision's channel), the recordings still open on it, and with AMI its
        out-of-band control, so agents and ``callconsent record`` reach it again."""
        uid, recordings = await asyncio.to_thread(_stored_leg, self.calls, live.ref.id)
        call = self.registry.attach(live.ref.pbx_call_id, uid)
        live.pbx_channel_id = live.pbx_channel_id or uid
        for rec in recordings:
            file = RecordingFile(Path(rec.spool_path), rec.format, rec.channels, rec.sample_rate)
            call.files[rec.id] = file
            call.open_recordings.add(rec.id)
        if self.ami is not None and uid:
            policy = live.machine.policy
            live.control = AmiControl(self, call, policy, language=live.machine.language)

    async def recording_ref(self, key: str, recording_id: str, ref: str) -> None:
        """A recording's MixMonitorID learnt after its start returned (a held-back start)."""
        live = self.calls.find(PBX, key)
        if live is not None:
            live.pbx_refs[recording_id] = ref
        await self.calls.ledger.set_pbx_ref_async(recording_id, ref)

    def on_ami_ready(self) -> None:
        """After a (re)login: a Hangup may have been missed while we were away, and after a
        daemon restart the store holds calls we do not."""
        self.spawn(self._recheck_calls())
        self.spawn(self.orphans.sweep(self._channel_exists, self._orphan_alive))

    async def _orphan_alive(self, orphan: OpenCall) -> None:
        """A call from before a daemon restart, still up: did its caller press the withdraw
        key while we were down? ``callconsent-withdraw`` marks the channel (and the spool:
        its time is the withdrawal's) before its AGI."""
        if self.ami is None:
            return
        marked = [uid for uid in sorted(orphan.channels) if await self._withdrawn_mark(uid)]
        if not marked:
            return
        live = await self.calls.lookup(PBX, orphan.pbx_call_id)  # rebuilt, with its AMI control
        if live is None or live.status is not c.ConsentStatus.GRANTED:
            return
        if live.machine.phase is not c.Phase.CONNECTED:
            return
        found = await live.consult_withdraw_marks(live.control)
        if not found and live.status is c.ConsentStatus.GRANTED:  # a variable, no file:
            await callbook.learn_withdrawal(live, None, live.control)  # the time is unknown
        for uid in marked:  # as the withdraw AGI does: the key is the caller's again
            found = await self.ami.action("Getvar", Channel=uid, Variable="DYNAMIC_FEATURES")
            kept = [f for f in str(found.get("Value") or "").split("#") if f]
            kept = [f for f in kept if not f.startswith("ccwithdraw_")]
            await self.ami.action(
                "Setvar", Channel=uid, Variable="DYNAMIC_FEATURES", Value="#".join(kept)
            )

    async def _withdrawn_mark(self, uid: str) -> bool:
        assert self.ami is not None
        try:
            found = await self.ami.action("Getvar", Channel=uid, Variable=WITHDRAWN_VAR)
        except (AmiError, AmiUnavailable, TimeoutError):
            return False
        return str(found.get("Value") or "") == "1"

    async def _channel_exists(self, uid: str) -> bool | None:
        if self.ami is None:
            return None
        try:
            await self.ami.action("Getvar", Channel=uid, Variable="UNIQUEID")
        except NoSuchChannel:
            return False
        except (AmiError, AmiUnavailable, TimeoutError):
            return None
        return True

    async def _recheck_calls(self) -> None:
        for call in self.registry.live():
            if not call.customer_uid:
                continue
            found = await self._channel_exists(call.customer_uid)
            if found is None:
                return
            if not found:
                log.info("call_ended_while_ami_was_away", extra={"kv": {"call": call.key}})
                self.closer.channel_gone(call.key)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background; :meth:`drain` waits for it on shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, coro: Any) -> None:
        """Run ``coro`` in the background, not waited for on shutdown (a delayed check)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def drain(self, wait_s: float) -> None:
        await self.closer.drain(wait_s)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=wait_s)

    def stop_watching(self) -> None:
        for task in list(self._watchers):
            task.cancel()


def _stored_leg(calls: CallBook, call_id: str) -> tuple[str | None, list[Recording]]:
    """The customer leg's uniqueid as the consent decision recorded it, and the recordings
    the PBX is still writing."""
    ledger = calls.ledger
    with ledger.db.read() as s:
        uid = s.scalar(
            select(ConsentRecord.pbx_channel_id).where(
                ConsentRecord.call_id == call_id, ConsentRecord.kind == "decision"
            )
        )
    open_ = [r for r in ledger.recordings_of_call(call_id) if r.state == "recording"]
    return uid, open_
