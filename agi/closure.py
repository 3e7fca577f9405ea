"""When a recording's file is final, tell the recorder; when the customer leg is gone, end
the call.

Asterisk writes a WAV's header only when it closes the file: 1–15 ms after the channel hangs
up (no event says so; capture ``s3_stereo``) or after ``StopMixMonitor`` returns.
``MixMonitorStop`` is never sent on hangup. So a recording is handed on only once its RIFF
and data sizes match the file's size, checked in a short, bounded poll. A ``.raw`` file has no
header: it is closed when the channel is gone (or the stop returned) and its size is stable.
A header that never becomes final (the PBX died mid-call) is left alone: the finalizer
repairs stale files from their size.

A call that ends while the store is out of reach (PostgreSQL down) cannot have its end or its
recordings' closure written: that is said once for all calls (``store_unavailable``), and its
ending is retried until the store is back, so its recordings are finalized then, not left in
the spool.
"""

from __future__ import annotations

import asyncio
import logging

from agi.calls import AsteriskCall, CallRegistry
from recorder.live.callbook import CallBook
from recorder.live.spoolfiles import header_final, wait_closed
from recorder.store import outage

__all__ = ["Closer", "header_final", "wait_closed"]

log = logging.getLogger("callconsent.agi")
PBX = "asterisk"


class _StoreAway(Exception):
    """A recording of the call could not be closed: the store is out of reach."""


class Closer:
    """Hands closed recordings to the recorder and ended calls to the call book, each once."""

    def __init__(self, calls: CallBook, registry: CallRegistry, wait_s: float = 2.0) -> None:
        self.calls = calls
        self.registry = registry
        self.wait_s = wait_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending: set[str] = set()

    def recording_stopped(self, call: AsteriskCall, recording_id: str) -> None:
        """A StopMixMonitor returned: the file closes now (the channel lives on)."""
        self._spawn(self._close_one(call, recording_id))

    def channel_gone(self, key: str) -> None:
        """The customer leg hung up (AMI ``Hangup``, or ``HANGUP`` in our AGI session)."""
        if key in self._ending:
            return
        self._ending.add(key)
        self._spawn(self._end_call(key))

    def release(self, call: AsteriskCall) -> None:
        """An AGI session of the call ended; forget the call if it is over and idle."""
        ending = call.key in self._ending  # _end_call forgets it itself when done
        if call.gone and call.agi_sessions == 0 and not call.open_recordings and not ending:
            self._forget(call.key)

    async def drain(self, wait_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=wait_s)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_one(self, call: AsteriskCall, rid: str) -> bool:
        """False if the store was out of reach: the recording stays open, to close again."""
        if rid not in call.open_recordings:
            return True
        call.open_recordings.discard(rid)
        file = call.files.get(rid)
        kv = {"call": call.key, "recording": rid}
        if file is None:
            return True
        try:
            if rid in call.held and not file.path.exists():
                # held back for its beep until the dialogue's last prompt; the call ended first
                log.info("recording_never_started", extra={"kv": kv})
                await self.calls.ledger.discard_async(rid, "call_ended_before_start", None)
                return True
            if not file.path.exists():
                # MixMonitor never opened it (bad path, full disk): nothing to keep or finalize
                log.error("recording_file_missing", extra={"kv": kv})
                await self.calls.ledger.discard_async(rid, "pbx_wrote_no_file", None)
                return True
            if not await wait_closed(file, self.wait_s):
                log.warning("recording_not_final", extra={"kv": {**kv, "after_s": self.wait_s}})
                return True  # the finalizer repairs the header of a stale file
            live = self.calls.find(PBX, call.key)
            if live is not None:
                await live.recording_closed(rid)
            else:
                await self.calls.ledger.recording_closed_async(rid)
        except Exception as exc:
            if outage.is_unavailable(exc):  # said once for all calls; closed again later
                outage.OUTAGE.report(exc, f"recording {rid}")
                call.open_recordings.add(rid)
                return False
            log.exception("recording_close_failed", extra={"kv": kv})
            return True
        log.info("recording_closed", extra={"kv": kv})
        return True

    async def _end_call(self, key: str) -> None:
        try:
            retry = 0
            while True:  # until the store can be written (ends at once when it can)
                try:
                    await self._end_once(key)
                    break
                except _StoreAway:
                    pass
                except Exception as exc:
                    if not outage.is_unavailable(exc):
                        raise
                    outage.OUTAGE.report(exc, f"call {key}")
                await asyncio.sleep(outage.retry_delay(retry))
                retry += 1
        except Exception:
            log.exception("call_end_failed", extra={"kv": {"call": key}})
        finally:
            self._ending.discard(key)
        if (call := self.registry.get(key)) is not None:
            self.release(call)

    async def _end_once(self, key: str) -> None:
        call = self.registry.get(key)
        if call is None:
            return
        call.gone = True
        pending = [self._close_one(call, rid) for rid in list(call.open_recordings)]
        if not all(await asyncio.gather(*pending)):
            raise _StoreAway
        live = self.calls.find(PBX, key)
        if live is not None:
            await live.hung_up()
        log.info("call_ended", extra={"kv": {"call": key}})

    def _forget(self, key: str) -> None:
        self.registry.drop(key)
        self.calls.forget(PBX, key)
