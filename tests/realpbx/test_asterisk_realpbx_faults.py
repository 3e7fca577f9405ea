"""Faults on the real Asterisk while real calls record (issue 17, point 3), `callconsent serve`
as its own account in its own process (:mod:`realpbx_faults`):

- Asterisk closes our AMI session (``manager kick session``) and refuses our login for a while
  (our user's secret changed, ``manager reload``), two calls hang up meanwhile, then it takes
  us back: the daemon logs in again, the calls that ended in the window are closed out and
  their recordings finalised (reconciliation), none lost or duplicated, the chain verifies.
- the spool fills up during two recordings, and the vault during their finalization (a small
  tmpfs each): said once, marked or kept, resumed when space is back;
- PostgreSQL stops with calls recording and arriving: fail closed, said once, recovered;
- `callconsent serve` killed (SIGKILL) with three calls recording, two hanging up while it
  is down: started again, it closes out the two it missed (its orphan sweep after the
  login) and finalises them; the third ends as usual.
- Asterisk restarts (``core stop now``, or SIGKILL; started again as its own account) with
  three calls recording: the calls it forgot are closed out, each recording is encrypted with
  a header that matches its audio, no plaintext is left, no error line; the next call records.

The restart tests are last in this module: they leave Asterisk running again for the others.
docs/reliability.md, section 5c, has the figures and the deliberate breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import diskfull
import pg
import pytest
from asterisk_real import Lab
from asterisk_real_harness import lab_or_skip
from daemon_process import MARKS
from realpbx_faults import (
    AsteriskPhones,
    Daemon,
    ami_sessions,
    asterisk_cli,
    asterisk_dirs,
    asterisk_section,
    check_evidence,
    daemon,
    kill_daemon,
    restart_asterisk,
    serve_again_and_end_the_third,
    small_vault,
    start_asterisk,
    until,
    vault_full_while_two_calls_end,
)

from recorder.store import migrate
from recorder.store.db import Database
from recorder.store.models import ConsentRecord, Recording

pytestmark = MARKS
LIMIT_S = 240  # the whole scenario, hung up rather than left on the shared PBX


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_or_skip()


def go(lab: Lab, calls: int, scenario, errors: frozenset[str] = frozenset(), url: str = "",
       spool_size: str = "", recorder: str = "") -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    with (
        asterisk_dirs(lab, spool_size) as (spool, prompts),
        daemon(asterisk_section(lab), spool, prompts, url=url, recorder=recorder) as d,
    ):

        async def main() -> None:
            phones = AsteriskPhones(lab)
            await phones.start()
            try:
                await asyncio.wait_for(scenario(d, phones), LIMIT_S)
            finally:
                await phones.stop()

        with d.shown():
            asyncio.run(main())
        check_evidence(d, calls, set(errors))


async def recording(d: Daemon, phones: AsteriskPhones, n: int) -> list[str]:
    tokens = [await phones.accepting() for _ in range(n)]
    await until(lambda: all(phones.decided(t) is not None for t in tokens), "all decided", 60)
    assert [phones.decided(t) for t in tokens] == ["granted"] * n
    await until(lambda: d.states().count("recording") == n, f"{n} recordings open", 30)
    return tokens


def test_ami_closed_and_refused_while_calls_end_then_back(lab: Lab) -> None:
    manager = lab.target.conf / "manager_callconsent.conf"
    shipped = manager.read_text()

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        tokens = await recording(d, phones, 3)
        assert len(ami_sessions(lab.ami_user)) == 1
        try:
            # Asterisk no longer takes our login, and closes the session we have
            assert f"secret = {lab.ami_secret}" in shipped
            manager.write_text(shipped.replace(f"secret = {lab.ami_secret}", "secret = nope"))
            asterisk_cli("manager reload")
            for fd in ami_sessions(lab.ami_user):
                asterisk_cli(f"manager kick session {fd}")
            await until(lambda: d.lines("ami_login_failed"), "a refused login", 30)
            await phones.hang_up(*tokens[:2])  # two calls end while we are away
            await until(lambda: all(phones.ended(t) for t in tokens[:2]), "two ended", 30)
            await asyncio.sleep(1.0)
            assert len(d.lines("ami_logged_in")) == 1  # still away
        finally:
            manager.write_text(shipped)
            asterisk_cli("manager reload")
        await until(lambda: len(d.lines("ami_logged_in")) == 2, "logged in again", 60)
        await until(
            lambda: d.states() == ["encrypted", "encrypted", "recording"],
            "the two calls of the window finalised",
            60,
        )
        await phones.hang_up(tokens[2])
        await until(lambda: d.states() == ["encrypted"] * 3, "the third finalised", 60)

    go(lab, 3, scenario, errors=frozenset({"ami_login_failed"}))  # the refused logins


def test_the_spool_full_during_real_recordings_is_said_and_marks_them(lab: Lab) -> None:
    """The spool (a 1 MiB tmpfs here) fills up while Asterisk records two calls: its
    MixMonitor loses what it cannot write, the daemon says ``spool_full`` once, and each
    recording open meanwhile is encrypted but marked ``possibly_truncated`` (audit row, log
    line); space back: ``spool_space_back`` once, and the next call is whole."""

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        tokens = await recording(d, phones, 2)
        await asyncio.sleep(1.0)
        filler = await asyncio.to_thread(diskfull.fill, d.spool, ".filler")
        await until(lambda: d.lines("spool_full"), "spool_full said", 30)
        await asyncio.sleep(1.0)  # the callers go on speaking into a full disk
        await phones.hang_up(*tokens)
        await until(lambda: d.states() == ["encrypted"] * 2, "the two encrypted", 60)
        filler.unlink()
        await until(lambda: d.lines("spool_space_back"), "spool_space_back said", 30)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)
        await phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 3, "the next call finalised", 60)
        recs = d.rows(Recording)
        cut = {r.id for r in recs if r.call_id != recs[-1].call_id}
        whole = (set(r.id for r in recs) - cut).pop()
        details = d.details("recording.encrypted")
        for rid in cut:
            assert "spool's file system was full" in details[rid]["possibly_truncated"]
        assert "possibly_truncated" not in details[whole]
        marked = [ln for ln in d.lines("recording_encrypted") if "possibly_truncated=" in ln]
        assert len(marked) == 2 and all(any(r in ln for ln in marked) for r in cut)
        assert len(d.lines("spool_full")) == 1 and len(d.lines("spool_space_back")) == 1
        assert [p.name for p in d.spool.iterdir()] == []  # no plaintext, no half-written file

    go(lab, 3, scenario, errors=frozenset({"spool_full"}), spool_size="1m",
       recorder="spool_full_bytes = 65536\n")  # fmt: skip


def test_the_vault_full_during_real_finalization_keeps_the_plaintext_then_resumes(
    lab: Lab,
) -> None:
    """The vault (a 1 MiB tmpfs) is full when two real calls end: nothing half-written is left
    in it, each WAV stays in the spool byte for byte, ``finalize_failed`` said once; space
    back: the reconciliation encrypts both, each decrypting to the WAV Asterisk wrote."""

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        async def two_calls_end() -> None:
            tokens = await recording(d, phones, 2)
            await asyncio.sleep(2.0)
            await phones.hang_up(*tokens)

        await vault_full_while_two_calls_end(d, vault, two_calls_end)

    with small_vault() as vault:
        go(lab, 2, scenario, errors=frozenset({"finalize_failed"}),
           recorder=f'vault_dir = "{vault}"\n')  # fmt: skip


@pytest.mark.postgres
def test_postgres_outage_with_real_calls_fails_closed_says_once_and_recovers(
    lab: Lab, pg_cluster: pg.Cluster
) -> None:
    """PostgreSQL stopped (``pg_ctl -m immediate``) with two calls recording: two calls that
    arrive meanwhile cannot have their evidence written, so they are not recorded (the
    dialplan's fallback) and leave no row; the two recording hang up meanwhile, their ends
    retried; ``store_unavailable`` said once. Started again: ``store_back`` once, the two
    ends written and finalised, the next call decided and recorded."""

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        tokens = await recording(d, phones, 2)
        await asyncio.to_thread(pg_cluster.stop)
        during = [await phones.accepting(hold_s=3) for _ in range(2)]
        await until(lambda: all(phones.ended(t) for t in during), "the outage's calls over", 60)
        await phones.hang_up(*tokens)
        await until(lambda: all(phones.ended(t) for t in tokens), "the two hung up", 30)
        await asyncio.sleep(2.0)  # a few retries of their ends
        assert len(d.lines("store_unavailable")) == 1, d.said()
        await asyncio.to_thread(pg_cluster.start)
        await until(lambda: d.lines("store_back"), "store_back", 60)
        await until(lambda: d.states() == ["encrypted"] * 2, "the two ends finalised", 60)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)
        await phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 3, "the next call finalised", 60)
        for t in during:  # fail closed: not recorded, the dialplan's fallback
            report = phones.report(t)
            assert report is not None
            assert report.get("Status") in ("", "unavailable"), dict(report)
            assert not report.get("Rec") and not report.get("Mixmon"), dict(report)
        assert [phones.decided(t) for t in [*tokens, after]] == ["granted"] * 3
        evidence = d.rows(ConsentRecord)
        assert len(evidence) == 3 and {e.status for e in evidence} == {"granted"}  # none invented
        assert len(d.lines("store_unavailable")) == 1 and len(d.lines("store_back")) == 1

    with pg.fresh_database(pg_cluster.url) as url:
        db = Database(url)
        migrate.upgrade(db)  # PostgreSQL: `callconsent db upgrade`, never at start-up
        db.dispose()
        go(lab, 3, scenario, errors=frozenset({"store_unavailable"}), url=url)


def test_the_daemon_killed_with_calls_recording_accounts_for_every_call_after_restart(
    lab: Lab,
) -> None:
    """`callconsent serve` killed (SIGKILL) with three real calls recording: Asterisk keeps
    the calls and their MixMonitors; two hang up while no daemon hears it. Started again, the
    daemon closes out the two it missed and finalises them, and the third ends as usual:
    three recordings, none lost or duplicated, each decrypting to a whole WAV, the chain
    verifies, no error line in the second daemon's log."""

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        tokens = await recording(d, phones, 3)
        await asyncio.sleep(1.0)  # the callers speak
        await kill_daemon(d)
        await phones.hang_up(*tokens[:2])  # two calls end while no daemon runs
        await until(lambda: all(phones.ended(t) for t in tokens[:2]), "two ended", 30)
        assert d.states() == ["recording"] * 3  # nobody heard them end
        await serve_again_and_end_the_third(d, lambda: phones.hang_up(tokens[2]))

    go(lab, 3, scenario)


@pytest.mark.parametrize("crash", [False, True], ids=["core-stop-now", "sigkill"])
def test_asterisk_restart_with_calls_recording(lab: Lab, crash: bool) -> None:
    """``core stop now`` hangs the calls up (their Hangup events reach us before AMI closes);
    SIGKILL forgets them: no event, the MixMonitor headers left at 0 and repaired."""

    async def scenario(d: Daemon, phones: AsteriskPhones) -> None:
        await recording(d, phones, 3)
        await asyncio.sleep(2.5)  # the callers speak: audio the PBX has written out
        try:
            await asyncio.to_thread(restart_asterisk, crash)
        finally:
            await asyncio.to_thread(start_asterisk)  # running again, whatever happened
        await until(lambda: d.states() == ["encrypted"] * 3, "the forgotten three finalised", 90)
        await until(lambda: len(d.lines("ami_logged_in")) >= 2, "logged in again", 60)
        await until(lambda: phones.ami.connected, "our phones' AMI back", 60)
        [after] = await recording(d, phones, 1)
        await asyncio.sleep(2.0)  # the caller speaks
        await phones.hang_up(after)
        await until(lambda: d.states() == ["encrypted"] * 4, "the next call finalised", 60)
        repaired = d.audited("recording.header_repaired")
        forgotten = {r.id for r in d.rows(Recording)} - {d.rows(Recording)[-1].id}
        assert (set(repaired) == forgotten) if crash else repaired == [], repaired

    go(lab, 4, scenario)
