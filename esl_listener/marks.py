"""The mark FreeSWITCH's withdraw extension leaves for a callconsent that may not hear its
event (see :mod:`recorder.live.withdrawals`): ``db insert/callconsent_withdrawn/${uuid}/1``.

mod_db keeps it in FreeSWITCH's core database, so it outlives the channel (and a FreeSWITCH
restart). We read it with ``api db select/…`` and remove it with ``api db delete/…``; the
ESL user needs ``db`` in ``esl-allowed-api``. FreeSWITCH cannot say when the key was
pressed: ``${strepoch()}`` is an api expansion, which the shipped hardening turns off.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from esl_listener import commands as cmd
from esl_listener.connection import ApiReply
from recorder.live.withdrawals import ChannelExists, WithdrawMark

log = logging.getLogger("callconsent.calls")
REALM = "callconsent_withdrawn"
NO_REPLY = "-ERR no reply"


class DbMarks:
    def __init__(self, api: Callable[[str], Awaitable[ApiReply]]) -> None:
        self.api = api

    async def find(self, channel: str) -> WithdrawMark | None:
        """Raises (EslError, TimeoutError) when FreeSWITCH cannot be asked. A refusal (mod_db
        not loaded, ``db`` not allowed) is logged and taken as no mark: a call must still end,
        or its recordings would never be finalized."""
        reply = await self.api(f"db select/{REALM}/{cmd.uuid(channel)}")
        if reply.first_line == NO_REPLY:  # the key is not there: mod_event_socket's word for
            return None  # an api that printed nothing (captured on 1.10.12)
        if not reply.ok:
            log.error(
                "withdraw_marks_refused",
                extra={"kv": {"reply": reply.first_line, "hint": "load mod_db, allow api db"}},
            )
            return None
        return WithdrawMark(channel, None)

    async def clear(self, channel: str) -> None:
        reply = await self.api(f"db delete/{REALM}/{cmd.uuid(channel)}")
        if not reply.ok:
            log.error("withdraw_mark_not_removed", extra={"kv": {"reply": reply.first_line}})

    async def remove_stale(self, keep: set[str], exists: ChannelExists) -> int:
        """Marks of no open call whose leg FreeSWITCH no longer has (``db list/…``, then
        ``uuid_exists`` for each): a crash between a call's end and its mark's removal left
        them. mod_db keeps no time, so a live leg's mark is kept whatever its age; a leg
        FreeSWITCH does not answer for is kept too. Raises when FreeSWITCH cannot be asked."""
        reply = await self.api(f"db list/{REALM}")
        if reply.first_line == NO_REPLY:  # the realm is empty
            return 0
        if not reply.ok:
            log.error("withdraw_marks_refused", extra={"kv": {"reply": reply.first_line}})
            return 0
        removed = 0
        for leg in reply.first_line.split(","):
            try:
                cmd.uuid(leg)
            except cmd.UnsafeValue:
                continue  # not a key our extension writes
            if leg in keep:
                continue
            up = await exists(leg)
            if up is None:  # FreeSWITCH did not say: keep the rest for the next login
                break
            if up:
                continue
            await self.clear(leg)
            removed += 1
        if removed:
            log.info("stale_withdraw_marks_removed", extra={"kv": {"marks": removed}})
        return removed
