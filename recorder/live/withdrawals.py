"""Withdrawals callconsent did not hear when they happened.

The caller's withdraw key runs the shipped dialplan, which tells us (an AGI, an ESL event). If
callconsent is down at that moment, or the AGI fails, the message is lost; and if the call
then ends before callconsent is back, the channel variable the dialplan also sets is gone
with it. So the dialplan leaves a mark that outlives the channel, named by the customer
leg's channel id: Asterisk writes ``withdrawn-<uniqueid>`` into the spool with ``FILE()``
(its time is the moment of the withdrawal); FreeSWITCH inserts ``<uuid>`` into mod_db's
``callconsent_withdrawn`` realm (no time: ``${strepoch()}`` needs api expansion, which the
hardening turns off).

Before a call is ended in the store (its hangup, or the orphan sweep after a restart), its
marks are consulted. A granted consent is then withdrawn as of the mark, and the policy's
``on_withdrawal`` applies: ``stop_and_discard`` destroys the recordings; ``stop``
keeps only those that ended by the moment of the withdrawal (the shipped Asterisk
subroutine stops the MixMonitor itself when its AGI fails). A recording that may have gone
on past it, or whose end or the withdrawal's time is unknown, is discarded: audio that
may hold speech recorded after the caller said no is not kept. The marks are removed only
after the store has it all, so a crash in between means the next look does it again (each
step is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from recorder.store.ledger import Ledger
from recorder.store.models import RecordingState

log = logging.getLogger("callconsent.calls")

CAUSE = "caller_withdrew_while_away"  # the evidence's cause for a withdrawal learnt later
#: How long after the mark a recording may still have been written to and be kept under
#: ``stop``: the subroutine stops it right after its AGI failed, and the PBX writes the
#: header a few ms later.
SLACK = timedelta(seconds=2)
_CHANNEL = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # an Asterisk uniqueid or FreeSWITCH uuid
#: Is this channel up? None when the PBX did not say.
ChannelExists = Callable[[str], Awaitable["bool | None"]]


@dataclass(frozen=True, slots=True)
class WithdrawMark:
    channel: str
    at: datetime | None  # when the key was pressed, if the PBX could say


class WithdrawMarks(Protocol):
    """Where one PBX's dialplan leaves its marks. Both methods raise on failure to ask (then
    nothing is decided on a guess)."""

    async def find(self, channel: str) -> WithdrawMark | None: ...

    async def clear(self, channel: str) -> None: ...

    async def remove_stale(self, keep: set[str], exists: ChannelExists) -> int:
        """Remove marks no open call (``keep``: their channels) will read: those a crash left
        between a call's end and its mark's removal. Returns how many."""
        ...


class SpoolMarks:
    """Asterisk: ``callconsent-withdraw`` writes ``<spool>/withdrawn-<uniqueid>``."""

    PREFIX = "withdrawn-"
    #: a mark of no open call is left this long (its file's time says when it was written)
    STALE_AGE = timedelta(days=1)

    def __init__(self, spool: Path) -> None:
        self.spool = Path(spool)

    def path(self, channel: str) -> Path | None:
        return self.spool / f"{self.PREFIX}{channel}" if _CHANNEL.match(channel) else None

    async def find(self, channel: str) -> WithdrawMark | None:
        path = self.path(channel)
        if path is None:
            return None
        try:
            st = await asyncio.to_thread(os.lstat, path)
        except FileNotFoundError:
            return None
        return WithdrawMark(channel, datetime.fromtimestamp(st.st_mtime, UTC))

    async def clear(self, channel: str) -> None:
        path = self.path(channel)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)

    async def remove_stale(self, keep: set[str], exists: ChannelExists) -> int:
        """Marks of no open call, older than :attr:`STALE_AGE`: removed (in a worker thread).
        The age, not ``exists``, guards a call that opens meanwhile."""
        return await asyncio.to_thread(self._remove_older, keep, self.STALE_AGE)

    def _remove_older(self, keep: set[str], older_than: timedelta) -> int:
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        with os.scandir(self.spool) as entries:
            for entry in entries:
                channel = entry.name.removeprefix(self.PREFIX)
                if channel == entry.name or channel in keep or not _CHANNEL.match(channel):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                    if datetime.fromtimestamp(st.st_mtime, UTC) > cutoff:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
        if removed:
            log.info("stale_withdraw_marks_removed", extra={"kv": {"marks": removed}})
        return removed


async def find(marks: WithdrawMarks, channels: Iterable[str]) -> list[WithdrawMark]:
    return [m for ch in sorted(set(channels)) if (m := await marks.find(ch)) is not None]


def ran_past(ledger: Ledger, call_id: str, at: datetime | None) -> list[str]:
    """The call's kept recordings that may hold audio from after ``at``: the plaintext's
    last write (as the PBX left it), else the start plus the measured duration."""
    kept = {RecordingState.RECORDING.value, RecordingState.CLOSED.value}
    kept.add(RecordingState.ENCRYPTED.value)
    past = []
    for rec in ledger.recordings_of_call(call_id):
        if rec.state not in kept:
            continue
        end: datetime | None = None
        try:
            end = datetime.fromtimestamp(os.lstat(rec.spool_path).st_mtime, UTC)
        except OSError:
            if rec.duration_ms is not None:
                end = rec.started_at + timedelta(milliseconds=rec.duration_ms)
        if at is None or end is None or end > at + SLACK:
            past.append(rec.id)
    return past
