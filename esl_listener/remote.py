"""A FreeSWITCH call's out-of-band :class:`~recorder.live.callbook.CallControl`: what happens after
the consent dialogue (agent codes, the CLI, bridges, the caller's withdraw key) is done with
``api`` commands over the inbound ESL connection, on the customer's leg."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import consent_ivr as c
from esl_listener import commands as cmd
from esl_listener.connection import ApiReply, EslError
from esl_listener.fscall import FsCall
from recorder.finalize.spool import Spool
from recorder.live.port import CallGone, RecordingFile
from recorder.live.prompts import PromptFile


class Registry(Protocol):
    """What the control needs of the call registry (:class:`esl_listener.calls.CallRegistry`
    is one); named here so that the registry may build controls without an import cycle."""

    spool: Spool
    eavesdrop_group: str

    api: Callable[[str], Awaitable[ApiReply]]

    def recording_started(self, call: FsCall, recording_id: str, path: str) -> None: ...

    async def not_started(self, recording_id: str) -> None: ...


log = logging.getLogger("callconsent.esl.calls")


class RemoteControl:
    """A call's out-of-band :class:`CallControl`: inbound ESL ``api`` commands on the customer
    leg, for what happens after the dialogue (agent codes, CLI, bridges, withdrawal)."""

    def __init__(self, registry: Registry, call: FsCall, agent_uuid: str | None) -> None:
        self.registry = registry
        self.call = call
        self.agent_uuid = agent_uuid

    async def _api(self, command: str) -> ApiReply | None:
        try:
            reply = await self.registry.api(command)
        except EslError as exc:
            log.error(
                "esl_api_unavailable", extra={"kv": {"call": self.call.key, "error": str(exc)}}
            )
            return None
        if not reply.ok:
            log.warning(
                "esl_api_refused",
                extra={
                    "kv": {
                        "call": self.call.key,
                        "api": command.split(" ", 1)[0],
                        "reply": reply.first_line,
                    }
                },
            )
        return reply

    def _leg(self) -> str:
        if not self.call.customer_uuid:
            raise CallGone("the customer's leg of this call is not known (not bridged yet)")
        return self.call.customer_uuid

    async def play(self, prompt: c.PlayPrompt, file: PromptFile) -> c.Event:
        log.error(
            "play_out_of_band", extra={"kv": {"call": self.call.key, "prompt": prompt.prompt_id}}
        )
        return c.PromptFailed(prompt.prompt_id, "no media path outside the dialogue")

    async def collect(self, collect: c.CollectDigit) -> c.Event:
        return c.InputTimedOut()

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            if name in cmd.CHANNEL_VARIABLES and self.call.customer_uuid:
                await self._api(
                    cmd.uuid_setvar(
                        self.call.customer_uuid, cmd.CHANNEL_VARIABLES[name], value or None
                    )
                )

    def recording_file(self, recording_id: str, stereo: bool) -> RecordingFile:
        return RecordingFile(self.registry.spool.path_for(recording_id), "wav", 2 if stereo else 1)

    async def start_recording(self, recording_id: str, file: RecordingFile) -> str | None:
        leg = self._leg()
        reply = await self._api(cmd.uuid_record(leg, "start", file.path, file.channels == 2))
        if reply is None:
            raise CallGone("the inbound ESL connection to FreeSWITCH is down")
        if "Cannot locate session" in reply.text:
            raise CallGone(f"FreeSWITCH: {reply.first_line}")
        if not reply.ok:
            await self.registry.not_started(recording_id)
            return None
        self.registry.recording_started(self.call, recording_id, str(file.path))
        return str(file.path)

    async def _record(self, action: str, recording_id: str, pbx_ref: str | None) -> ApiReply | None:
        path = pbx_ref or str(self.registry.spool.path_for(recording_id))
        if not self.call.customer_uuid:
            return None
        return await self._api(cmd.uuid_record(self.call.customer_uuid, action, path))

    async def pause_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        reply = await self._record("mask", recording_id, pbx_ref)
        if reply is not None and "Cannot locate session" in reply.text:
            raise CallGone(f"FreeSWITCH: {reply.first_line}")

    async def resume_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        reply = await self._record("unmask", recording_id, pbx_ref)
        if reply is not None and "Cannot locate session" in reply.text:
            raise CallGone(f"FreeSWITCH: {reply.first_line}")

    async def stop_recording(self, recording_id: str, pbx_ref: str | None) -> None:
        # never raises: a discard follows a stop in the same batch and must not be skipped
        await self._record("stop", recording_id, pbx_ref)

    async def allow_monitoring(self) -> None:
        if self.call.customer_uuid:
            await self._api(
                cmd.uuid_setvar(
                    self.call.customer_uuid, "eavesdrop_group", self.registry.eavesdrop_group
                )
            )

    async def stop_monitoring(self) -> None:
        """Withdrawn consent: no new listener (group removed), and current ones cut off."""
        if self.call.customer_uuid:
            await self._api(cmd.uuid_setvar(self.call.customer_uuid, "eavesdrop_group", None))
        for leg in sorted(self.call.listeners):
            await self._api(f"uuid_kill {cmd.uuid(leg)}")

    async def reject(self, verb: str, reason: str) -> None:
        if self.agent_uuid:
            await self._api(f"uuid_broadcast {cmd.uuid(self.agent_uuid)} {cmd.tone()} aleg")

    async def hand_back(self) -> None:
        return None
