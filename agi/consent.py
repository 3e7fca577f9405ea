"""The consent sessions on the customer's side: inbound consent, outbound registration, the
answer hook, and the caller's withdraw key.

Each session reads what it needs in one base64-encoded round trip (caller data can neither
split nor forge a reply), finds or opens the call in the shared
:class:`recorder.live.callbook.CallBook` under ``CHANNEL(linkedid)`` (not in the AGI environment),
and lets :mod:`consent_ivr` decide. The ``CallBook`` stores the decision before a recording is
registered, and registers it before ``MixMonitor`` writes a byte.
"""

from __future__ import annotations

import asyncio
import logging

import consent_ivr as c
from agi.calls import AsteriskCall
from agi.context import Asterisk
from agi.control import AmiControl, ChannelControl, play_agent_tone
from agi.session import AgiSession
from recorder.live.callbook import LiveCall

log = logging.getLogger("callconsent.agi")
PBX = "asterisk"
WITHDRAW_FEATURE = {**{d: f"ccwithdraw_{d}" for d in "0123456789"}, "*": "ccwithdraw_star"}
WITHDRAW_FEATURE["#"] = "ccwithdraw_hash"


def is_withheld(presentation: str) -> bool:
    """``CALLERID(num-pres)``: ``prohib*`` (CLIR) and ``unavailable`` keep nothing."""
    return presentation.startswith("prohib") or presentation == "unavailable"


async def inbound(ad: Asterisk, session: AgiSession, campaign: str) -> None:
    """``Gosub(callconsent-inbound,s,1(<campaign>))`` → ``agi://…/consent/<campaign>``."""
    env = session.env
    found = await session.values(
        "${CHANNEL(linkedid)}", "${CALLERID(num)}", "${CALLERID(num-pres)}", "${CHANNEL(state)}"
    )
    if not found or not found[0]:
        log.error("agi_no_linkedid", extra={"kv": {"channel": env.uniqueid}})
        return
    key, number, presentation, state = found
    withheld = is_withheld(presentation)
    live = await ad.calls.open(
        pbx=PBX,
        pbx_call_id=key,
        campaign=campaign,
        direction="inbound",
        number=number or ("" if withheld else None),  # withheld: the ledger keeps nothing
        number_withheld=withheld,
        channel_language=env.language or None,
        pbx_channel_id=env.uniqueid,
    )
    call = ad.registry.attach(key, env.uniqueid)
    await _run_on_customer_leg(ad, session, live, call, answer=state != "Up")


async def outbound(ad: Asterisk, session: AgiSession, campaign: str, agent: str) -> None:
    """``Gosub(callconsent-outbound,s,1(<campaign>,<agent>[,<number>]))`` on the agent's
    channel before it dials: registers the call; the dialogue (or the campaign's mode)
    runs on the customer's channel when it answers (``answer``)."""
    found = await session.values("${CHANNEL(linkedid)}", "${ARG3}")
    if not found or not found[0]:
        return
    key, number = found
    await ad.calls.open(
        pbx=PBX,
        pbx_call_id=key,
        campaign=campaign,
        direction="outbound",
        number=number or None,
        agent=agent,
    )
    ad.registry.attach(key)
    await session.set_variable("__CONSENT_CALL", key)
    await session.set_variable("CONSENT_AGENT", agent)  # the agent's leg only
    log.info("outbound_registered", extra={"kv": {"call": key, "campaign": campaign}})


async def answered(ad: Asterisk, session: AgiSession) -> None:
    """A leg was answered (Dial ``U()``, Queue's AGI and gosub arguments)."""
    env = session.env
    found = await session.values("${CONSENT_CALL}", "${CHANNEL(linkedid)}", "${CONSENT_AGENT}")
    if not found:
        return
    key = found[0] or found[1]
    live = await ad.calls.lookup(PBX, key)
    if live is None:
        log.warning("answer_for_unknown_call", extra={"kv": {"channel": env.uniqueid}})
        return
    call = ad.registry.attach(key)
    machine = live.machine
    if live.ref.direction == "outbound" and machine.phase is c.Phase.READY:
        # the customer picked up an outbound call: this is the customer leg
        call = ad.registry.attach(key, env.uniqueid)
        live.pbx_channel_id = env.uniqueid
        await _run_on_customer_leg(ad, session, live, call, answer=False, agent=found[2])
        return
    if machine.phase not in (c.Phase.CONFIRMING, c.Phase.CONNECTED, c.Phase.ENDED):
        return
    agent_name = found[2] or None
    call.agi_sessions += 1
    try:
        if call.customer_uid == env.uniqueid:
            # Queue's AGI argument runs on the caller's channel once a member answered
            control = ChannelControl(ad, call, machine.policy, session)
            await live.feed(c.AgentAnswered(agent_name), control)
            return
        # the agent's leg (Dial U(), Queue gosub): whisper the status, then agent_answer
        if machine.policy.whisper and machine.status is not None:
            status_prompt = f"agent-status-{machine.status.value}"
            await play_agent_tone(ad, session, status_prompt, machine.language)
        if _reserved(live) and ad.ami_system is None:
            # Queue's AGI argument starts it on the customer leg right after this; with Dial
            # nothing will: say so if it is still waiting in a moment
            ad.watch(_warn_if_never_started(live, key))
            return
        control = AmiControl(ad, call, machine.policy, agent_session=session)
        await live.feed(c.AgentAnswered(agent_name), control)
    finally:
        call.agi_sessions -= 1
        ad.closer.release(call)


def _reserved(live: LiveCall) -> bool:
    return any(s is c.RecordingState.RESERVED for s in live.machine.recordings.values())


async def _warn_if_never_started(live: LiveCall, key: str, wait_s: float = 3.0) -> None:
    await asyncio.sleep(wait_s)
    if _reserved(live) and live.machine.phase is c.Phase.CONNECTED:
        log.warning(
            "agent_answer_recording_not_started",
            extra={
                "kv": {
                    "call": key,
                    "why": "record_from = agent_answer: the agent leg cannot start MixMonitor on "
                    "the customer leg; use Queue's AGI argument or the write=system AMI user",
                }
            },
        )


async def withdraw(ad: Asterisk, session: AgiSession, digit: str) -> None:
    """The caller pressed a withdraw key (a feature enabled on the customer leg only)."""
    env = session.env
    found = await session.values("${CONSENT_CALL}", "${CHANNEL(linkedid)}", "${DYNAMIC_FEATURES}")
    if not found:
        return
    live = await ad.calls.lookup(PBX, found[0] or found[1])
    if live is None or live.machine.phase is not c.Phase.CONNECTED:
        return
    call = ad.registry.attach(live.ref.pbx_call_id)
    if call.customer_uid not in (None, env.uniqueid):
        log.warning("withdraw_from_another_leg", extra={"kv": {"call": call.key}})
        return
    call = ad.registry.attach(call.key, env.uniqueid)
    control = ChannelControl(ad, call, live.machine.policy, session)
    call.agi_sessions += 1
    try:
        await live.feed(c.DigitReceived(digit), control)
        if live.status is c.ConsentStatus.WITHDRAWN:
            remaining = [f for f in found[2].split("#") if f and not f.startswith("ccwithdraw_")]
            await session.set_variable("DYNAMIC_FEATURES", "#".join(remaining))
    finally:
        call.agi_sessions -= 1
        ad.closer.release(call)


async def _run_on_customer_leg(
    ad: Asterisk,
    session: AgiSession,
    live: LiveCall,
    call: AsteriskCall,
    *,
    answer: bool,
    agent: str | None = None,
) -> None:
    machine = live.machine
    control = ChannelControl(ad, call, machine.policy, session, prompts_follow=True)
    if ad.ami is not None:
        live.control = AmiControl(ad, call, machine.policy, language=machine.language)
    call.agi_sessions += 1
    try:
        if machine.phase is not c.Phase.READY:
            await _carry_decision(live, control)  # the IVR again on a decided call
            return
        if answer:
            await session.answer()
        status = await live.run_dialogue(control)
        if machine.phase is c.Phase.CONNECTED and live.ref.direction == "outbound":
            await live.feed(c.AgentAnswered(agent or None), control)  # the agent is already on
        if status is c.ConsentStatus.GRANTED and machine.phase is c.Phase.CONNECTED:
            await _enable_withdraw(session, machine.policy)
    finally:
        call.agi_sessions -= 1
        if machine.phase is c.Phase.ENDED or session.hung_up:
            ad.closer.channel_gone(call.key)
        ad.closer.release(call)


async def _carry_decision(live: LiveCall, control: ChannelControl) -> None:
    snap = live.machine.snapshot()
    await control.set_variables(
        {
            "CONSENT_STATUS": snap.status.value,
            "CONSENT_ID": snap.consent_id,
            "CONSENT_RECORDING_ID": live.machine.current_recording or "",
        }
    )


async def _enable_withdraw(session: AgiSession, policy: c.Policy) -> None:
    """The caller's withdraw key, as a dynamic feature of the customer leg only (not
    inherited: the agent leg never gets it, the customer leg never gets the agents')."""
    if policy.withdraw_digit is None:
        return
    feature = WITHDRAW_FEATURE.get(policy.withdraw_digit)
    if feature is None:  # A-D: no feature code is shipped for them
        log.error("withdraw_key_unsupported", extra={"kv": {"key": policy.withdraw_digit}})
        return
    current = await session.value("${DYNAMIC_FEATURES}") or ""
    features = [f for f in current.split("#") if f and f != feature] + [feature]
    await session.set_variable("DYNAMIC_FEATURES", "#".join(features))
