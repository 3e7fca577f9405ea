"""Calls the store says are going on that this daemon does not hold: it restarted (or
crashed) during them.

Their recordings stay ``recording`` until their call is over (the finalizer adopts a file
only then, ``Finalizer._adopt_if_settled``), and a hangup of a channel the adapter does not
know is otherwise ignored: the plaintext would stay in the spool for good. So after each
login to the PBX the adapter sweeps them: a call none of whose channels still exists is
ended in the store now; the others are watched, and ended when their last channel hangs up.
A call the adapter rebuilds meanwhile (an agent's code, ``callconsent record``) is ended by
the adapter itself; ending twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select

from recorder.callbook import CallBook
from recorder.ledger import Ledger
from recorder.models import Call, ConsentRecord, Recording

log = logging.getLogger("callconsent.calls")
_CHUNK = 500  # ids per IN list

# a channel's existence as the PBX says: True, False, or None when it did not answer
ChannelExists = Callable[[str], Awaitable[bool | None]]


@dataclass(frozen=True, slots=True)
class OpenCall:
    id: str
    pbx_call_id: str
    channels: frozenset[str]  # the decision's channel and the recordings' (else the call id)


def open_calls(ledger: Ledger, pbx: str) -> list[OpenCall]:
    """This node's calls on ``pbx`` that have not ended, with the channels that matter: the
    customer's, where the decision was taken and the recordings run. A call that got neither
    far is named by its PBX call id (Asterisk's linkedid, FreeSWITCH's Channel-Call-UUID),
    which may be another leg (an outbound call's agent), so it ends when that one does."""
    with ledger.db.read() as s:
        rows = s.execute(
            select(Call.id, Call.pbx_call_id).where(
                Call.node == ledger.ctx.node[:64], Call.pbx == pbx, Call.ended_at.is_(None)
            )
        ).all()
        channels: dict[str, set[str]] = {r.id: set() for r in rows}
        ids = list(channels)
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            for query in (
                select(ConsentRecord.call_id, ConsentRecord.pbx_channel_id).where(
                    ConsentRecord.call_id.in_(part), ConsentRecord.pbx_channel_id.is_not(None)
                ),
                select(Recording.call_id, Recording.pbx_channel).where(
                    Recording.call_id.in_(part), Recording.pbx_channel.is_not(None)
                ),
            ):
                for call_id, channel in s.execute(query):
                    channels[call_id].add(channel)
    return [
        OpenCall(r.id, r.pbx_call_id, frozenset(channels[r.id] or {r.pbx_call_id})) for r in rows
    ]


class Orphans:
    def __init__(self, calls: CallBook, pbx: str) -> None:
        self.calls, self.pbx = calls, pbx
        self._alive: dict[str, set[str]] = {}  # call id -> its channels still up
        self._by_channel: dict[str, str] = {}  # channel -> call id

    def watches(self, channel: str) -> bool:
        return channel in self._by_channel

    async def sweep(
        self, exists: ChannelExists, on_alive: Callable[[OpenCall], Awaitable[None]] | None = None
    ) -> None:
        """After a login: ask the PBX about every open call this daemon does not hold.
        ``on_alive`` sees each call still up (an adapter's chance to read what it missed)."""
        found = await asyncio.to_thread(open_calls, self.calls.ledger, self.pbx)
        alive: dict[str, set[str]] = {}
        for call in found:
            if self.calls.find(self.pbx, call.pbx_call_id) is not None:
                continue  # held: its adapter ends it
            up = set()
            for channel in sorted(call.channels):
                answer = await exists(channel)
                if answer is None:
                    log.warning("orphan_sweep_stopped", extra={"kv": {"why": "no answer"}})
                    return  # the next login sweeps again; nothing is ended on a guess
                if answer:
                    up.add(channel)
            if up:
                alive[call.id] = up
                if on_alive is not None:
                    await on_alive(call)
            else:
                await self._end(call.id, "gone_while_daemon_away")
        self._alive = alive
        self._by_channel = {ch: cid for cid, chans in alive.items() for ch in chans}
        if alive:
            log.info("orphan_calls_watched", extra={"kv": {"calls": len(alive)}})

    async def channel_gone(self, channel: str) -> None:
        """A hangup of a channel the adapter does not hold."""
        call_id = self._by_channel.pop(channel, None)
        if call_id is None:
            return
        up = self._alive.get(call_id, set())
        up.discard(channel)
        if not up:
            self._alive.pop(call_id, None)
            await self._end(call_id, "hung_up_after_daemon_restart")

    async def _end(self, call_id: str, why: str) -> None:
        await asyncio.to_thread(self.calls.ledger.call_ended, call_id)
        log.info("orphan_call_ended", extra={"kv": {"call": call_id, "why": why}})
