"""The FreeSWITCH side of the daemon, as one component named ``freeswitch``: the outbound-socket
server (consent dialogues) and the inbound ESL client (what happens after them), sharing one
:class:`~esl_listener.calls.CallRegistry`.

Built from ``app.calls``, ``app.spool`` and the ``[freeswitch]`` config section; it never imports
:mod:`callconsent` (the section is read by attribute), so the dependency rules hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from esl_listener.calls import CallRegistry
from esl_listener.connection import ApiReply
from esl_listener.consent import ConsentSessions
from esl_listener.inbound import WITHDRAW_EVENT, InboundClient
from esl_listener.outbound import OutboundServer
from recorder.finalize.spool import Spool
from recorder.live.callbook import CallBook

log = logging.getLogger("callconsent.esl")


class FreeswitchConfigError(Exception):
    """The ``[freeswitch]`` section cannot work as written; the message names the key."""


@dataclass(frozen=True, slots=True)
class Settings:
    outbound_host: str = "127.0.0.1"
    outbound_port: int = 8084
    esl_host: str = "127.0.0.1"
    esl_port: int = 8021
    esl_user: str = ""
    esl_password: str = ""
    eavesdrop_group: str = "consented"
    command_timeout_s: float = 10.0

    @classmethod
    def from_section(cls, section: Any) -> Settings:
        names = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{n: getattr(section, n) for n in names if hasattr(section, n)})


class FreeswitchService:
    name = "freeswitch"

    def __init__(self, calls: CallBook, spool: Spool, settings: Settings) -> None:
        if not settings.esl_password:
            raise FreeswitchConfigError(
                "freeswitch.esl_password: required — RECORD_STOP (the moment a recording's file "
                "is final) and the agents' feature codes arrive only on the inbound ESL connection"
            )
        self.calls = calls
        self.settings = settings
        self.inbound = InboundClient(
            settings.esl_host,
            settings.esl_port,
            settings.esl_password,
            user=settings.esl_user or None,
            on_event=self._on_event,
            on_connected=self._on_connected,
            shard=self._shard,
            command_timeout=settings.command_timeout_s,
        )
        self.registry = CallRegistry(
            calls, spool, self._api, eavesdrop_group=settings.eavesdrop_group
        )
        self.registry.hears_withdrawals = self._hears_withdrawals
        self.outbound = OutboundServer(
            ConsentSessions(calls, self.registry),
            settings.outbound_host,
            settings.outbound_port,
            command_timeout=settings.command_timeout_s,
        )

    @classmethod
    def from_config(cls, calls: CallBook, spool: Spool, section: Any) -> FreeswitchService:
        return cls(calls, spool, Settings.from_section(section))

    def _warn_asterisk_only_options(self) -> None:
        """``beep_interval_s`` and ``whisper`` are done by Asterisk's MixMonitor and agent
        AGI; on FreeSWITCH nothing would beep or whisper, so say so instead of staying silent."""
        book = self.calls.policies()
        named = {"default": book.default, **book.campaigns}
        for name, policy in named.items():
            unused = [k for k in ("beep_interval_s", "whisper") if getattr(policy, k)]
            if unused:
                log.warning(
                    "policy_option_not_on_freeswitch",
                    extra={"kv": {"policy": name, "options": ",".join(unused)}},
                )

    def _hears_withdrawals(self) -> bool:
        # a connection that is merely down still counts: the check after the reconnection
        # reads the leg's callconsent_withdrawn mark (CallRegistry.recheck)
        return WITHDRAW_EVENT not in self.inbound.refused_subscriptions

    async def _api(self, command: str) -> ApiReply:
        return await self.inbound.api(command)

    async def _on_connected(self) -> None:
        await self.registry.recheck()

    async def _on_event(self, event: Any) -> None:
        await self.registry.on_event(event)

    def _shard(self, event: Any) -> str:
        return self.registry.event_key(event)

    async def start(self) -> None:
        self._warn_asterisk_only_options()
        await self.inbound.start()
        await self.outbound.start()

    async def stop(self) -> None:
        await self.outbound.stop()
        await self.inbound.stop()
