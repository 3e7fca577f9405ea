"""Calls the store says are going on that this daemon does not hold: it restarted (or
crashed) during them.

Their recordings stay ``recording`` until their call is over (the finalizer adopts a file
only then, ``Finalizer._adopt_if_settled``), and a hangup of a channel the adapter does not
know is otherwise ignored: the plaintext would stay in the spool for good. So after each
login to the PBX the adapter sweeps them: a call none of whose channels still exists is
ended in the store now; the others are watched, and ended when their last channel hangs up.
Once an orphan's end is known, each of its files that is final (:mod:`recorder.live.spoolfiles`)
goes to the recorder at once, not at the finalizer's next reconcile pass (a minute of
plaintext less on disk). A call the adapter rebuilds meanwhile (an agent's code,
``callconsent record``) is ended by the adapter itself; ending twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from recorder.live import callbook, spoolfiles, withdrawals
from recorder.live.callbook import CallBook
from recorder.live.port import RecordingFile
from recorder.store import outage
from recorder.store.db import in_batches
from recorder.store.ledger import Ledger
from recorder.store.models import Call, ConsentRecord, Recording

log = logging.getLogger("callconsent.calls")
_CHUNK = 512  # ids per IN list (padded: recorder.store.db.in_batches)
# a channel's existence as the PBX says: True, False, or None when it did not answer
ChannelExists = withdrawals.ChannelExists


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
        for part in in_batches(list(channels), _CHUNK):
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
    def __init__(self, calls: CallBook, pbx: str, file_wait_s: float = 2.0) -> None:
        self.calls, self.pbx = calls, pbx
        self.file_wait_s = file_wait_s  # how long a file may take to close after the hangup
        self._alive: dict[str, set[str]] = {}  # call id -> its channels still up
        self._watched: dict[str, OpenCall] = {}
        self._by_channel: dict[str, str] = {}  # channel -> call id
        self._sweeping = asyncio.Lock()  # one sweep at a time, however quick the re-logins

    def watches(self, channel: str) -> bool:
        return channel in self._by_channel

    async def sweep(
        self, exists: ChannelExists, on_alive: Callable[[OpenCall], Awaitable[None]] | None = None
    ) -> None:
        """After a login: ask the PBX about every open call this daemon does not hold.
        ``on_alive`` sees each call still up (an adapter's chance to read what it missed).
        A channel found up is watched at once, so a hangup during the sweep is not missed;
        one call's failure is logged and the sweep goes on."""
        async with self._sweeping:
            try:
                found = await asyncio.to_thread(open_calls, self.calls.ledger, self.pbx)
            except Exception:
                log.exception("orphan_sweep_failed")
                return
            still_open = {call.id for call in found}
            for call_id in [c for c in self._alive if c not in still_open]:
                self._unwatch(call_id)
            for call in found:
                if self.calls.find(self.pbx, call.pbx_call_id) is not None:
                    self._unwatch(call.id)  # held: its adapter ends it
                    continue
                try:
                    if not await self._check(call, exists, on_alive):
                        return  # the PBX did not answer: the next login sweeps again
                except Exception:
                    log.exception("orphan_check_failed", extra={"kv": {"call": call.id}})
            if self._alive:
                log.info("orphan_calls_watched", extra={"kv": {"calls": len(self._alive)}})
            await self._remove_stale_marks(exists)

    async def _remove_stale_marks(self, exists: ChannelExists) -> None:
        """Marks no open call will read (a crash between a call's end and its mark's
        removal). The open calls are asked for again here: one may have opened meanwhile."""
        marks = self.calls.marks.get(self.pbx)
        if marks is None:
            return
        try:
            now_open = await asyncio.to_thread(open_calls, self.calls.ledger, self.pbx)
            await marks.remove_stale({ch for call in now_open for ch in call.channels}, exists)
        except (ConnectionError, TimeoutError) as exc:  # the PBX went away again meanwhile
            log.warning(
                "stale_withdraw_marks_unremoved",
                extra={"kv": {"why": str(exc) or type(exc).__name__, "retry": "next login"}},
            )
        except Exception as exc:
            if outage.is_unavailable(exc):
                outage.OUTAGE.report(exc, "stale withdraw marks")
            else:
                log.exception("stale_withdraw_marks_unremoved")

    async def _check(
        self,
        call: OpenCall,
        exists: ChannelExists,
        on_alive: Callable[[OpenCall], Awaitable[None]] | None,
    ) -> bool:
        """False when the PBX did not answer (nothing is ended on a guess)."""
        self._unwatch(call.id)
        up = False
        for channel in sorted(call.channels):
            answer = await exists(channel)
            if answer is None:
                log.warning("orphan_sweep_stopped", extra={"kv": {"why": "no answer"}})
                return False
            if answer:
                up = True
                self._alive.setdefault(call.id, set()).add(channel)
                self._by_channel[channel] = call.id
                self._watched[call.id] = call
        if not up:
            await self._end(call, "gone_while_daemon_away")
        elif on_alive is not None:
            await on_alive(call)
        return True

    async def channel_gone(self, channel: str) -> None:
        """A hangup of a channel the adapter does not hold."""
        call_id = self._by_channel.get(channel)
        if call_id is None:
            return
        up = self._alive.get(call_id, set())
        if up - {channel}:
            up.discard(channel)
            del self._by_channel[channel]
            return
        if await self._end(self._watched[call_id], "hung_up_after_daemon_restart"):
            self._unwatch(call_id)  # only once the store knows: else the next hangup retries

    def _unwatch(self, call_id: str) -> None:
        self._watched.pop(call_id, None)
        for channel in self._alive.pop(call_id, set()):
            self._by_channel.pop(channel, None)

    async def _end(self, call: OpenCall, why: str) -> bool:
        try:
            await self._withdrawn_meanwhile(call)
            await self.calls.ledger.call_ended_async(call.id)
        except Exception:
            log.exception("orphan_end_failed", extra={"kv": {"call": call.id}})
            return False
        log.info("orphan_call_ended", extra={"kv": {"call": call.id, "why": why}})
        try:
            await self._hand_on_files(call)
        except Exception:  # the finalizer's reconcile pass still adopts them
            log.exception("orphan_recordings_not_handed_on", extra={"kv": {"call": call.id}})
        return True

    async def _hand_on_files(self, call: OpenCall) -> None:
        """The call is over: each of its recordings still ``recording`` whose file is final
        (or, raw, stable) goes to the recorder now rather than at the finalizer's next
        reconcile pass. One that is not is left to that pass (which repairs stale files).
        FreeSWITCH's RECORD_STOP may have closed them already: those are skipped."""
        ledger = self.calls.ledger
        for rec in await asyncio.to_thread(ledger.recordings_of_call, call.id):
            if rec.state != "recording":
                continue
            kv = {"call": call.id, "recording": rec.id}
            file = RecordingFile(Path(rec.spool_path), rec.format, rec.channels, rec.sample_rate)
            if not file.path.exists():
                continue  # never written: the reconcile pass deals with it
            if not await spoolfiles.wait_closed(file, self.file_wait_s):
                log.warning(
                    "recording_not_final", extra={"kv": {**kv, "after_s": self.file_wait_s}}
                )
                continue
            await ledger.recording_closed_async(rec.id)
            log.info("recording_closed", extra={"kv": kv})

    async def _withdrawn_meanwhile(self, call: OpenCall) -> None:
        """Before the store ends the call: a withdraw key pressed while nobody heard it left
        a mark (recorder.live.withdrawals), and the call is rebuilt to act on it. Raises if the
        marks cannot be read, so the call is not ended on a guess."""
        marks = self.calls.marks.get(self.pbx)
        if marks is None:
            return
        found = await withdrawals.find(marks, call.channels)  # asked once (an api call each)
        if not found:
            return
        held = self.calls.find(self.pbx, call.pbx_call_id) is not None
        live = await self.calls.lookup(self.pbx, call.pbx_call_id)  # None: never decided
        try:
            await callbook.act_on_marks(live, marks, found)
        finally:
            if not held:
                self.calls.forget(self.pbx, call.pbx_call_id)
