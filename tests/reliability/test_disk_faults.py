"""The disk filling up while calls are in progress (simulated Asterisk, the assembled
adapter, the real finalizer), on a real file system that fills: a tmpfs of a few hundred KiB
mounted over the vault or the spool (root only; skipped elsewhere, saying why).

- The vault's disk full during finalization: nothing half-written is taken for a recording
  (no ciphertext, no temp file, the row stays ``closed``, the plaintext WAV untouched and
  final), it is said once for all the recordings, and everything is finalised when space is
  back, each ciphertext decrypting to the very WAV the PBX wrote.
- The spool's disk full during a recording: the PBX loses the audio it cannot write (the
  simulator goes on as Asterisk's MixMonitor does), so the file it closes is a well-formed
  WAV that is too short. It is kept and encrypted (what was recorded is evidence too), but
  never as if it were whole: ``spool_full`` is said once while it lasts, the gauge
  ``callconsent_spool_full`` is 1, and each recording that was open meanwhile carries
  ``possibly_truncated`` in its ``recording.encrypted`` audit row and its log line; a call
  recorded after the space is back does not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from unittest.mock import ANY

import sqlalchemy as sa
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import SimCall, hangup, press
from diskfull import fill, free_bytes, tmpfs
from recstore import files_in, make_rig
from wirefuzz import LogTap

from recorder import metrics
from recorder.finalize import wavcheck
from recorder.finalize.finalizer import FinalizerSettings
from recorder.store import audit
from recorder.store.models import AuditEntry, Recording
from recorder.vault import directory as vault_mod
from recorder.vault.directory import MARKER

NEVER_S = 3600.0  # reconcile only when the test says so
LONG_TALK = [press("1", "consent", 1.0), hangup("talk", 10_000.0)]  # hung up by the test


async def start_calls(h: Harness, n: int) -> tuple[list[asyncio.Task[SimCall]], list]:
    """``n`` consented calls, each recording (its MixMonitor writing) when this returns."""
    before = len(h.sim.customers())
    tasks = [asyncio.create_task(h.sim.inbound("sales", list(LONG_TALK))) for _ in range(n)]
    await h.sim.wait_until(
        lambda: (
            len(h.sim.customers()) == before + n
            and all(c.mixmonitors for c in h.sim.customers()[before:])
        ),
        20,
    )
    legs = h.sim.customers()[before:]
    await h.sim.wait_until(lambda: all(m.frames for c in legs for m in c.mixmonitors.values()))
    return tasks, legs


async def hang_up(h: Harness, tasks: list[asyncio.Task[SimCall]], legs: list) -> None:
    for leg in legs:
        h.sim.hangup(leg)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    await h.settle()


async def until(condition, what: str, wait_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + wait_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


def recordings(h: Harness) -> list[Recording]:
    with h.app.db.read() as s:
        return list(s.scalars(sa.select(Recording).order_by(Recording.started_at)))


def encrypted_details(h: Harness) -> dict[str, dict]:  # type: ignore[type-arg]
    with h.app.db.read() as s:
        rows = s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "recording.encrypted"))
        return {a.subject_id: json.loads(a.details) for a in rows}


def wav_frames(path: Path) -> int:
    with open(path, "rb") as f:
        return wavcheck.inspect_wav(f, os.fstat(f.fileno()).st_size).frames


def plaintext_of(rec: Recording, private_key, tmp: Path) -> str:  # type: ignore[no-untyped-def]
    """The SHA-256 of the recording's decrypted ciphertext, checked against its row, once its
    plaintext is gone from the spool."""
    assert not os.path.exists(rec.spool_path)  # the plaintext went after the commit
    out = tmp / f"{rec.id}.wav"
    vault_mod.decrypt_to(Path(rec.ciphertext_path or ""), rec.id, private_key, out)
    assert sha256(out) == rec.plaintext_sha256
    return sha256(out)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def said(records: list[logging.LogRecord], level: int = logging.WARNING) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records if r.levelno >= level]


def test_the_vault_disk_full_during_finalization_keeps_the_plaintext_then_resumes(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        with tmpfs(tmp_path / "vault", "64m") as vault_dir:
            settings = FinalizerSettings(
                reconcile_interval_s=NEVER_S,
                settle_s=NEVER_S,
                not_final_retries=(0.01,),
                overdue_after_s=0.5,
            )
            rig = make_rig(h.app, settings=settings)
            rig.finalizer.vault = vault_mod.Vault(vault_dir)
            rig.finalizer.vault.ensure()
            await rig.finalizer.start()
            try:
                filler = fill(vault_dir)
                assert free_bytes(vault_dir) == 0
                with LogTap() as tap:
                    tasks, legs = await start_calls(h, 4)
                    await hang_up(h, tasks[:3], legs[:3])  # the 4th goes on talking
                    await until(lambda: rig.finalizer.stats["failed"] >= 3, "3 failures")
                    recs = recordings(h)
                    closed = [r for r in recs if r.state == "closed"]
                    assert len(closed) == 3 and [r.state for r in recs].count("recording") == 1
                    # nothing half-written: no ciphertext, no temp file, the plaintext final
                    assert files_in(vault_dir) == [MARKER, "filler"]
                    written = {}
                    for r in closed:
                        assert wav_frames(Path(r.spool_path)) > 0  # final, readable
                        written[r.id] = sha256(Path(r.spool_path))
                        assert r.ciphertext_path is None and r.plaintext_sha256 is None
                    # past the retry window: the gauge counts them, said once over two passes
                    await asyncio.sleep(0.6)
                    await asyncio.to_thread(rig.finalizer.reconcile)
                    await until(lambda: rig.finalizer.stats["failed"] >= 6, "3 retries")
                    await asyncio.to_thread(rig.finalizer.reconcile)
                    assert metrics.PLAINTEXT_OVERDUE._value.get() == 3
                    assert all(sha256(Path(r.spool_path)) == written[r.id] for r in closed)
                    during = tap.take()
                    # space is back: the next pass finalises all, the call still going on too
                    filler.unlink()
                    await hang_up(h, tasks[3:], legs[3:])
                    await asyncio.to_thread(rig.finalizer.reconcile)
                    await until(
                        lambda: [r.state for r in recordings(h)] == ["encrypted"] * 4,
                        "all four encrypted",
                    )
                    await asyncio.sleep(0.6)
                    await asyncio.to_thread(rig.finalizer.reconcile)
                    after = tap.take()
            finally:
                await rig.finalizer.stop()
            events = said(during)
            assert events.count(("ERROR", "finalize_failed")) == 1, events  # not 6: once
            assert events.count(("ERROR", "plaintext_overdue")) == 1, events
            assert {e for e in events} == {
                ("ERROR", "finalize_failed"),
                ("ERROR", "plaintext_overdue"),
            }, events
            line = tap.line(next(r for r in during if r.getMessage() == "finalize_failed"))
            assert "disk full writing to the vault" in line
            assert not [r for r in during + after if r.exc_info]
            assert said(after) == [
                ("WARNING", "finalize_resumed"),
                ("WARNING", "plaintext_overdue_cleared"),
            ]
            assert metrics.PLAINTEXT_OVERDUE._value.get() == 0
            for r in recordings(h):
                assert plaintext_of(r, rig.keys.private_key, tmp_path) == written.get(r.id, ANY)
            with h.app.db.read() as s:
                assert audit.verify(s).ok

    run(tmp_path, scenario)


def test_the_spool_disk_full_during_recordings_is_said_and_marks_them(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        spool = h.app.spool.path
        with tmpfs(spool, "768k", mode="2770"):
            h.app.spool.check()  # a spool as the daemon wants it (2770)
            settings = FinalizerSettings(
                reconcile_interval_s=NEVER_S,
                settle_s=NEVER_S,
                not_final_retries=(0.01,),
                spool_full_bytes=64 * 1024,
                spool_watch_s=0.02,
            )
            rig = make_rig(h.app, settings=settings)
            await rig.finalizer.start()
            try:
                with LogTap() as tap:
                    tasks, legs = await start_calls(h, 3)
                    filler = fill(spool, ".filler")  # the PBX's next writes fail
                    await until(
                        lambda: all(m.lost_writes for c in legs for m in c.mixmonitors.values()),
                        "every monitor lost a write",
                    )
                    await until(lambda: metrics.SPOOL_FULL._value.get() == 1, "gauge")
                    await hang_up(h, tasks, legs)
                    await until(
                        lambda: [r.state for r in recordings(h)] == ["encrypted"] * 3,
                        "the three encrypted",
                    )
                    filler.unlink()
                    await until(lambda: metrics.SPOOL_FULL._value.get() == 0, "gauge back")
                    cut = [r.id for r in recordings(h)]
                    tasks, legs = await start_calls(h, 1)  # after the space is back
                    await hang_up(h, tasks, legs)
                    await until(lambda: recordings(h)[-1].state == "encrypted", "the 4th")
                    records = tap.take()
            finally:
                await rig.finalizer.stop()
            whole = recordings(h)[-1].id
            details = encrypted_details(h)
            for rid in cut:
                assert "spool's file system was full" in details[rid]["possibly_truncated"]
            assert "possibly_truncated" not in details[whole]
            events = said(records)
            assert events.count(("ERROR", "spool_full")) == 1, events
            assert events.count(("WARNING", "spool_space_back")) == 1, events
            marked = [
                r.kv["recording"]
                for r in records
                if r.getMessage() == "recording_encrypted" and "possibly_truncated" in r.kv
            ]
            assert sorted(marked) == sorted(cut)
            assert set(events) == {
                ("ERROR", "spool_full"),
                ("WARNING", "spool_space_back"),
                ("WARNING", "recording_encrypted"),
            }, events
            assert not [r for r in records if r.exc_info]
            assert not [p for p in os.listdir(spool) if not p.startswith(".")]
            with h.app.db.read() as s:
                assert audit.verify(s).ok

    run(tmp_path, scenario)
