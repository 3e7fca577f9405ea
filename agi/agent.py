"""Agents' feature codes: ``*41`` start, ``*42`` pause/resume, ``*43`` stop, ``*49`` the
customer declined (stop and destroy what was recorded).

The codes are an ``[applicationmap]`` include, enabled by ``DYNAMIC_FEATURES`` on the agent
leg only. ``*42``/``*43``/``*49`` are ``self`` features: the AGI runs on the agent leg, finds
the call by ``CONSENT_CALL`` (inherited) or ``CHANNEL(linkedid)``, and acts on the customer
leg through AMI with its uniqueid and the MixMonitorID (capture ``s2``). ``*41`` is a ``peer``
feature: its AGI runs on the customer leg itself (capture ``s2b``), where ``EXEC MixMonitor``
starts the recording without a ``write=system`` AMI user. Both kinds are handled here: the
session knows which leg it is on by comparing ``DYNAMIC_WHO_ACTIVATED`` with its channel.
"""

from __future__ import annotations

import logging
import re

import consent_ivr as c
from agi.context import Asterisk
from agi.control import AmiControl, ChannelControl, play_agent_tone
from agi.session import AgiSession
from recorder.live.port import CallControl

log = logging.getLogger("callconsent.agi")
PBX = "asterisk"
VERBS = ("start", "pause", "stop", "discard")
_CHANNEL_SUFFIX = re.compile(r"-[0-9a-f]{8}(;[12])?$")


def agent_label(channel: str) -> str:
    """``PJSIP/7001-0000002a`` → ``PJSIP/7001``: the agent, without the call's suffix."""
    return _CHANNEL_SUFFIX.sub("", channel)[:64]


def resolve(verb: str, machine: c.ConsentCall) -> str:
    """``pause`` is a toggle (one code for card data): resume a paused recording."""
    if verb != "pause":
        return verb
    rid = machine.current_recording
    if rid is not None and machine.recordings.get(rid) is c.RecordingState.PAUSED:
        return "resume"
    return "pause"


async def command(ad: Asterisk, session: AgiSession, verb: str) -> None:
    env = session.env
    found = await session.values(
        "${CONSENT_CALL}",
        "${CHANNEL(linkedid)}",
        "${DYNAMIC_WHO_ACTIVATED}",
        "${BRIDGEPEER}",
        "${CONSENT_AGENT}",
    )
    if not found:
        return
    consent_call, linkedid, activator, peer, agent_name = found
    key = consent_call or linkedid
    on_customer_leg = bool(activator) and activator != env.channel
    if on_customer_leg and not agent_name:  # the agent's name is set on the agent's leg
        agent_name = await session.value("${CONSENT_AGENT}", channel=activator) or ""
    actor = agent_name or agent_label(activator if on_customer_leg else env.channel)
    kv = {"call": key, "verb": verb, "leg": "customer" if on_customer_leg else "agent"}
    live = await ad.calls.lookup(PBX, key)
    if live is None:
        log.warning("agent_command_unknown_call", extra={"kv": kv})
        if not on_customer_leg:
            await play_agent_tone(ad, session, "agent-refused", "en")
        return
    machine = live.machine
    call = ad.registry.attach(key)
    control: CallControl
    if on_customer_leg:
        if call.customer_uid not in (None, env.uniqueid):
            log.warning("agent_command_not_on_the_customer_leg", extra={"kv": kv})
            return
        call = ad.registry.attach(key, env.uniqueid)
        control = ChannelControl(ad, call, machine.policy, session, agent_channel=activator)
    else:
        if call.customer_uid is None and peer:
            # a call restored after a restart: its customer leg is our bridge peer
            peer_found = await session.values("${UNIQUEID}", "${CHANNEL(linkedid)}", channel=peer)
            if peer_found and peer_found[1] in (key, linkedid):
                call = ad.registry.attach(key, peer_found[0])
        if ad.ami is None or call.customer_uid is None:
            why = "no AMI user" if ad.ami is None else "customer leg unknown"
            log.error("agent_command_impossible", extra={"kv": {**kv, "why": why}})
            await play_agent_tone(ad, session, "agent-refused", machine.language)
            return
        control = AmiControl(ad, call, machine.policy, session, machine.language)
    if machine.phase is c.Phase.READY:
        log.warning("agent_command_before_the_call_was_decided", extra={"kv": kv})
        return
    verb = resolve(verb, machine)
    call.agi_sessions += 1
    try:
        done = await live.agent(verb, actor, control)
        refused = [a for a in done if isinstance(a, c.RejectCommand)]
        log.info(
            "agent_command",
            extra={"kv": {**kv, "verb": verb, "refused": refused[0].reason if refused else "-"}},
        )
        if not refused and not on_customer_leg:
            await play_agent_tone(ad, session, "agent-done", machine.language)
    finally:
        call.agi_sessions -= 1
        ad.closer.release(call)
