"""Faults on the real FreeSWITCH while real calls record (issue 17, point 3), `callconsent serve`
as its own account in its own process (:mod:`realpbx_faults`):

- our inbound event socket connection is cut (``ss -K``) and our ESL user refused for a while
  (its password changed, ``reloadxml``), two calls hang up meanwhile (their RECORD_STOP and
  CHANNEL_HANGUP_COMPLETE go nowhere), then it takes us back: the daemon reconnects, asks
  ``uuid_exists`` for what it holds, ends those calls and their recordings are finalised;
  none lost or duplicated, the chain verifies.
- the spool fills up during two recordings, and the vault during their finalization;
- PostgreSQL stops with calls recording and one arriving: fail closed, said once, recovered;
- `callconsent serve` killed (SIGKILL) with three calls recording, two hanging up while it
  is down: started again, it closes out the two it missed (its orphan sweep after the
  login) and finalises them; the third ends as usual.
- FreeSWITCH restarts (``fs_cli -x shutdown``, or SIGKILL; started again as its own account)
  with three calls recording: the calls it forgot are closed out, each recording encrypted
  with a header that matches its audio, no plaintext left, no error line; the next call records.

The restart tests are last in this module and leave FreeSWITCH running again for the others.
docs/reliability.md, section 5c, has the figures and the deliberate breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import diskfull
import pg
import pytest
from daemon_process import MARKS
from freeswitch_real import Real, endpoint
from realpbx_faults import (
    Daemon,
    FreeswitchPhones,
    check_evidence,
    cut,
    daemon,
    esl_ports,
    esl_user_file,
    freeswitch_dirs,
    freeswitch_install,
    freeswitch_section,
    fs_cli,
    kill_daemon,
    restart_freeswitch,
    serve_again_and_end_the_third,
    small_vault,
    start_freeswitch,
    until,
    vault_full_while_two_calls_end,
)

from recorder.store import migrate
from recorder.store.db import Database
from recorder.store.models import ConsentRecord, Recording

pytestmark = MARKS
LIMIT_S = 240


@pytest.fixture(scope="module")
def real() -> Iterator[Real]:
    yield endpoint()


def go(real: Real, calls: int, scenario, errors: frozenset[str] = frozenset(), audio: bool = True,
       url: str = "", spool_size: str = "", recorder: str = "") -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    before = freeswitch_install(real)
    with (
        freeswitch_dirs(real, spool_size) as (spool, prompts),
        daemon(freeswitch_section(real), spool, prompts, before=before, url=url,
               recorder=recorder) as d,
    ):  # fmt: skip
        phones = FreeswitchPhones()

        async def main() -> None:
            await until(lambda: d.lines("esl_connected"), "the ESL login", 30)
            await asyncio.wait_for(scenario(d, phones), LIMIT_S)

        try:
            with d.shown():
                asyncio.run(main())
        finally:
            phones.stop()
        check_evidence(d, calls, set(errors), audio)


async def recording(d: Daemon, phones: FreeswitchPhones, n: int) -> list[str]:
    legs = [phones.accepting() for _ in range(n)]
    await until(lambda: d.states().count("recording") == n, f"{n} recordings open", 60)
    return legs


def test_esl_cut_and_refused_while_calls_end_then_back(real: Real) -> None:
    user = esl_user_file(real)

    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        shipped = user.read_text()  # the daemon's ESL user, as installed for it
        assert 'name="esl-password" value="rt-' in shipped
        legs = await recording(d, phones, 3)
        [port] = esl_ports(d.proc.pid)  # type: ignore[union-attr]
        try:
            # FreeSWITCH no longer takes our login, and our connection is gone
            user.write_text(
                shipped.replace('"esl-password" value="rt-', '"esl-password" value="x-')
            )
            assert "+OK" in fs_cli("reloadxml")
            cut(port)
            await until(lambda: d.lines("esl_disconnected"), "the disconnection seen", 30)
            await until(lambda: d.lines("esl_auth_failed"), "a refused login", 30)
            phones.hang_up(*legs[:2])  # two calls end while we are away
            await until(lambda: not any(map(phones.alive, legs[:2])), "two ended", 30)
            await asyncio.sleep(1.0)
            assert len(d.lines("esl_connected")) == 1  # still away
            assert d.states() == ["recording"] * 3  # nothing could tell the daemon yet
        finally:
            user.write_text(shipped)
            fs_cli("reloadxml")
        # after a refused login the client waits its longest backoff (30 s)
        await until(lambda: len(d.lines("esl_connected")) == 2, "connected again", 60)
        await until(
            lambda: d.states() == ["encrypted", "encrypted", "recording"],
            "the two calls of the window finalised",
            60,
        )
        phones.hang_up(legs[2])
        await until(lambda: d.states() == ["encrypted"] * 3, "the third finalised", 60)

    go(real, 3, scenario, errors=frozenset({"esl_auth_failed"}))  # the refused logins


def test_the_spool_full_during_real_freeswitch_recordings_is_said_and_marks_them(
    real: Real,
) -> None:
    """The spool (a 1 MiB tmpfs) fills up while FreeSWITCH records two calls: ``spool_full``
    once, both encrypted and marked ``possibly_truncated``; space back: ``spool_space_back``
    once, the next call whole."""

    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        legs = await recording(d, phones, 2)
        await asyncio.sleep(1.0)
        filler = await asyncio.to_thread(diskfull.fill, d.spool, ".filler")
        await until(lambda: d.lines("spool_full"), "spool_full said", 30)
        await asyncio.sleep(1.0)
        phones.hang_up(*legs)
        await until(lambda: d.states() == ["encrypted"] * 2, "the two encrypted", 60)
        filler.unlink()
        await until(lambda: d.lines("spool_space_back"), "spool_space_back said", 30)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)
        phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 3, "the next call finalised", 60)
        recs = d.rows(Recording)
        cut = {r.id for r in recs if r.call_id != recs[-1].call_id}
        whole = ({r.id for r in recs} - cut).pop()
        details = d.details("recording.encrypted")
        for rid in cut:
            assert "spool's file system was full" in details[rid]["possibly_truncated"]
        assert "possibly_truncated" not in details[whole]
        assert len(d.lines("spool_full")) == 1 and len(d.lines("spool_space_back")) == 1
        assert [p.name for p in d.spool.iterdir()] == []

    go(real, 3, scenario, errors=frozenset({"spool_full"}), spool_size="1m",
       recorder="spool_full_bytes = 65536\n")  # fmt: skip


def test_the_vault_full_during_real_freeswitch_finalization_keeps_the_plaintext(
    real: Real,
) -> None:
    """The vault (a 1 MiB tmpfs) is full when two FreeSWITCH calls end: nothing half-written
    in it, both WAVs kept in the spool byte for byte, ``finalize_failed`` once; space back:
    both encrypted, each decrypting to the very WAV FreeSWITCH wrote."""

    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        async def two_calls_end() -> None:
            legs = await recording(d, phones, 2)
            await asyncio.sleep(2.0)
            phones.hang_up(*legs)

        await vault_full_while_two_calls_end(d, vault, two_calls_end)

    with small_vault() as vault:
        go(real, 2, scenario, errors=frozenset({"finalize_failed"}),
           recorder=f'vault_dir = "{vault}"\n')  # fmt: skip


@pytest.mark.postgres
def test_postgres_outage_with_real_freeswitch_calls(real: Real, pg_cluster: pg.Cluster) -> None:
    """PostgreSQL stopped with two calls recording: a call arriving meanwhile is not recorded
    and leaves no row, the two hang up meanwhile; ``store_unavailable`` once. Started again:
    ``store_back`` once, both ended and finalised, the next call recorded."""

    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        legs = await recording(d, phones, 2)
        await asyncio.to_thread(pg_cluster.stop)
        during = phones.accepting(hold_s=3)
        await until(lambda: not phones.alive(during), "the outage's call over", 60)
        phones.hang_up(*legs)
        await until(lambda: not any(map(phones.alive, legs)), "the two hung up", 30)
        await asyncio.sleep(2.0)
        assert len(d.lines("store_unavailable")) == 1, d.said()
        unrecorded = sorted(p.name for p in d.spool.iterdir())  # the two's files, no third
        await asyncio.to_thread(pg_cluster.start)
        await until(lambda: d.lines("store_back"), "store_back", 60)
        await until(lambda: d.states() == ["encrypted"] * 2, "the two ends finalised", 60)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)
        phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 3, "the next call finalised", 60)
        assert len(unrecorded) == 2, unrecorded
        evidence = d.rows(ConsentRecord)
        assert len(evidence) == 3 and {e.status for e in evidence} == {"granted"}  # none invented
        assert len(d.lines("store_unavailable")) == 1 and len(d.lines("store_back")) == 1

    with pg.fresh_database(pg_cluster.url) as url:
        db = Database(url)
        migrate.upgrade(db)
        db.dispose()
        go(real, 3, scenario, errors=frozenset({"store_unavailable"}), url=url)


def test_the_daemon_killed_with_calls_recording_accounts_for_every_call_after_restart(
    real: Real,
) -> None:
    """`callconsent serve` killed (SIGKILL) with three real calls recording: FreeSWITCH
    keeps the calls (their outbound sockets gone) and their recordings; two hang up while no
    daemon hears it. Started again, the daemon ends the two it missed (``uuid_exists`` after
    its ESL login) and finalises them, and the third ends as usual: three recordings, none
    lost or duplicated, the chain verifies, no error line in the second daemon's log."""

    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        legs = await recording(d, phones, 3)
        await asyncio.sleep(1.0)  # the callers speak
        await kill_daemon(d)
        await asyncio.sleep(1.0)
        assert all(map(phones.alive, legs)), "FreeSWITCH kept the calls"
        phones.hang_up(*legs[:2])  # two calls end while no daemon runs
        await until(lambda: not any(map(phones.alive, legs[:2])), "two ended", 30)
        assert d.states() == ["recording"] * 3  # nobody heard them end

        async def end_third() -> None:
            phones.hang_up(legs[2])

        await serve_again_and_end_the_third(d, end_third)

    go(real, 3, scenario)


@pytest.mark.parametrize("crash", [False, True], ids=["shutdown", "sigkill"])
def test_freeswitch_restart_with_calls_recording(real: Real, crash: bool) -> None:
    async def scenario(d: Daemon, phones: FreeswitchPhones) -> None:
        await recording(d, phones, 3)
        await asyncio.sleep(2.5)  # audio the PBX has written out
        try:
            await asyncio.to_thread(restart_freeswitch, crash)
        finally:
            await asyncio.to_thread(start_freeswitch)  # running again, whatever happened
        await until(lambda: d.states() == ["encrypted"] * 3, "the forgotten three finalised", 90)
        await until(lambda: len(d.lines("esl_connected")) >= 2, "connected again", 60)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)
        phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 4, "the next call finalised", 60)
        repaired = d.audited("recording.header_repaired")
        forgotten = {r.id for r in d.rows(Recording)} - {d.rows(Recording)[-1].id}
        assert (set(repaired) == forgotten) if crash else repaired == [], repaired

    # killed, FreeSWITCH had not written its buffered audio 2.5 s in: headers only, repaired
    go(real, 4, scenario, audio=not crash)
