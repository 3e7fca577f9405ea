"""The FreeSWITCH adapter against a real FreeSWITCH 1.10 (``CALLCONSENT_FREESWITCH``), running
as its own account, with the shipped dialplan and ESL user installed into its configuration:
the same flows as the simulator tests, driven by loopback calls (see :mod:`freeswitch_real`)."""

from __future__ import annotations

import asyncio
import socket
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from error_lines import no_error_lines
from freeswitch_real import Driver, Real, decision, endpoint, open_app, rows, run, until

from callconsent.app import App
from esl_listener.service import FreeswitchService
from recorder.live.callbook import CallBook
from recorder.store.models import Call, ConsentRecord, Recording

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]


@pytest.fixture(scope="module")
def real() -> Iterator[Real]:
    yield endpoint()


@pytest.fixture
def app(tmp_path: Path, real: Real) -> Iterator[App]:
    with open_app(tmp_path, real) as application:
        yield application


def test_real_accept_records_until_hangup(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_sales_talk",
            "'m:^:sleep:1200^send_dtmf:1^playback:tone_stream://L=6;%(1000,0,440)^hangup'",
        )
        await until(lambda: driver.leg("cc_agent_talk-a") is not None, "the agent leg ended", 40)
        await until(
            lambda: rows(app, Recording) and rows(app, Recording)[0].state == "closed",
            "RECORD_STOP",
        )
        assert decision(app).status == "granted"
        agent = driver.leg("cc_agent_talk-a")
        assert agent.get("variable_consent_status") == "granted"  # exported to the agent leg
        assert agent.get("variable_consent_recording_id") == rows(app, Recording)[0].id
        with wave.open(str(app.spool.path_for(rows(app, Recording)[0].id))) as w:
            assert w.getnchannels() == 1 and w.getnframes() > 8000
        await until(lambda: rows(app, Call)[0].ended_at is not None, "call ended")
        await until(lambda: len(app.calls) == 0, "call forgotten")

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        run(app, real, scenario)


def test_real_decline_and_silence_are_not_recorded(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_sales_talk", "'m:^:sleep:1200^send_dtmf:2^sleep:6000^hangup'"
        )
        await driver.originate("cc_in_default_talk", "'m:^:sleep:12000^hangup'")
        await until(lambda: len(driver.hangups) >= 8, "both calls over", 40)
        statuses = sorted(r.status for r in rows(app, ConsentRecord))
        assert statuses == ["declined", "no_input"]
        assert rows(app, Recording) == []
        agents = [
            e.get("variable_consent_status")
            for e in driver.hangups
            if "cc_agent_talk-a" in (e.get("Channel-Name") or "")
        ]
        assert sorted(agents) == ["declined", "no_input"]  # both callers were still served

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        run(app, real, scenario)


def test_real_hangup_in_the_prompt(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate("cc_in_default_talk", "'m:^:sleep:300^hangup'")
        await until(lambda: bool(rows(app, ConsentRecord)), "decision", 20)
        d = decision(app)
        assert (d.status, d.method) == ("no_input", "hangup")
        await until(lambda: rows(app, Call)[0].ended_at is not None, "ended")
        assert rows(app, Recording) == []

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        run(app, real, scenario)


def test_real_service_down_falls_back_to_unavailable(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await svc.outbound.stop()
        await driver.originate("cc_in_rt_sales_talk", "'m:^:sleep:4000^hangup'")
        await until(lambda: driver.leg("cc_agent_talk-a") is not None, "agent leg over", 30)
        assert driver.leg("cc_agent_talk-a").get("variable_consent_status") == "unavailable"
        assert rows(app, Call) == []

    run(app, real, scenario)


def test_real_agent_codes_start_mask_stop_discard(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_ondemand_codes", "'m:^:playback:tone_stream://L=16;%(1000,0,440)^hangup'"
        )
        await until(lambda: driver.leg("cc_agent_codes-a") is not None, "agent done", 40)
        await until(
            lambda: bool(rows(app, Recording)) and rows(app, Recording)[0].state == "discarded",
            "discarded",
            10,
        )
        (rec,) = rows(app, Recording)  # the second *41 came after *49: refused
        changes = [r.status for r in rows(app, ConsentRecord) if r.kind == "change"]
        assert changes == ["granted", "declined"]
        with wave.open(str(app.spool.path_for(rec.id))) as w:
            frames = w.readframes(w.getnframes())
        samples = memoryview(frames).cast("h")
        longest = run_ = 0
        for s in samples:
            run_ = run_ + 1 if s == 0 else 0
            longest = max(longest, run_)
        assert longest >= 8000  # the masked stretch (~2 s) is digital silence

    run(app, real, scenario)


def test_real_codes_are_bound_on_the_agent_leg_only(app: App, real) -> None:  # type: ignore[no-untyped-def]
    """The customer's *41 reaches the agent's phone as plain keys and fires nothing; the
    agent's *41, a few seconds later, starts the recording."""

    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_ondemand_late",
            "'m:^:sleep:2000^send_dtmf:~*41^playback:tone_stream://L=8;%(1000,0,440)^hangup'",
        )
        await until(lambda: driver.leg("cc_agent_late-a") is not None, "agent done", 40)
        await until(lambda: bool(rows(app, Recording)), "the agent's *41 started it", 10)
        assert driver.seen("CUSTOM", "cc_agent_late-a") == ["start"]
        assert driver.seen("CUSTOM", "cc_in_rt_ondemand_late") == []
        assert driver.seen("DTMF", "cc_agent_late-b") == ["*", "4", "1"]  # the agent heard it
        assert [r.status for r in rows(app, ConsentRecord) if r.kind == "change"] == ["granted"]

    run(app, real, scenario)


def test_real_withdraw_key(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_withdraw_idle",
            "'m:^:set:sleep_eat_digits=true^sleep:1200^send_dtmf:1^sleep:5000^send_dtmf:~9"
            "^sleep:3000^hangup'",
        )
        await until(
            lambda: bool(rows(app, Recording)) and rows(app, Recording)[0].state == "discarded",
            "withdrawn: stopped and discarded",
            40,
        )
        (rec,) = rows(app, Recording)
        assert [r.status for r in rows(app, ConsentRecord)] == ["granted", "withdrawn"]
        await until(lambda: driver.leg("cc_in_rt_withdraw_idle-b") is not None, "over", 30)
        customer = driver.leg("cc_in_rt_withdraw_idle-b")
        assert customer.get("variable_consent_status") == "withdrawn"
        assert customer.get("variable_eavesdrop_group") is None  # listen-in ended
        assert driver.seen("CUSTOM", "cc_in_rt_withdraw_idle-b") == ["withdraw"]
        assert customer.get("variable_callconsent_withdrawn") == "true"  # the extension's mark
        with wave.open(str(app.spool.path_for(rec.id))) as w:  # FreeSWITCH closed it
            assert w.getnframes() > 8000

    run(app, real, scenario)


def test_real_withdrawal_and_hangup_while_the_daemon_was_away(  # type: ignore[no-untyped-def]
    app: App, real, caplog: pytest.LogCaptureFixture
) -> None:
    """Our inbound connection is cut after consent; the caller presses the withdraw key (its
    event reaches nobody) and a second call hangs up meanwhile. After the reconnection the
    check asks the real FreeSWITCH (uuid_exists, uuid_getvar as the restricted ESL user)."""

    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        first = await driver.originate(
            "cc_in_rt_withdraw_idle",
            "'m:^:set:sleep_eat_digits=true^sleep:1200^send_dtmf:1^sleep:6000^send_dtmf:~9"
            "^sleep:15000^hangup'",
        )
        await driver.originate(
            "cc_in_rt_withdraw_idle",
            "'m:^:set:sleep_eat_digits=true^sleep:1200^send_dtmf:1^sleep:5000^hangup'",
        )
        await until(
            lambda: caplog.text.count("withdraw_key_bound") == 2,
            "both consented, recording, the withdraw key bound",
            20,
        )
        # the next pause before reconnecting is the backoff as it was (0.5 s): cut once to
        # take up the new one, then again to be away for 5.6..8.4 s while both happen
        svc.inbound.backoff = (7.0, 7.0)
        for n in (2, 3):
            assert svc.inbound._conn is not None
            await svc.inbound._conn.close("test: the daemon loses FreeSWITCH")
            await until(lambda n=n: svc.inbound.connections == n, "reconnected", 30)
        await until(
            lambda: sorted(r.state for r in rows(app, Recording)) == ["discarded", "recording"],
            "the withdrawn one discarded, the ended one left to the finalizer",
            20,
        )
        # the ended call's store row may follow the other's discard by a few api round trips
        await until(
            lambda: sum(c.ended_at is not None for c in rows(app, Call)) == 1, "one ended", 20
        )
        assert "call_ended_while_esl_was_away" in caplog.text
        assert "caller_withdrew_while_esl_was_away" in caplog.text
        assert sorted(r.status for r in rows(app, ConsentRecord)) == [
            "granted",
            "granted",
            "withdrawn",
        ]
        await driver.conn.api(f"uuid_kill {first}")  # leave no call behind for the next test
        over = lambda: [e for e in driver.hangups if "withdraw_idle-b" in e.get("Channel-Name", "")]  # noqa: E731
        await until(lambda: len(over()) == 2, "both calls over", 30)

    caplog.set_level("INFO", logger="callconsent.esl")
    run(app, real, scenario)


def test_real_withdrawal_and_hangup_while_the_daemon_was_down(  # type: ignore[no-untyped-def]
    app: App, real, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon stops during a recorded call; the caller presses the withdraw key and hangs
    up while it is down. The leg and its variable are gone; the extension's mod_db mark is
    not. The restarted daemon's login withdraws the consent before it ends the call (the
    recording is discarded), then removes the mark."""

    async def scenario(driver: Driver, old: FreeswitchService) -> None:
        await driver.originate(
            "cc_in_rt_withdraw_idle",
            "'m:^:set:sleep_eat_digits=true^sleep:1200^send_dtmf:1^sleep:5000^send_dtmf:~9"
            "^sleep:2000^hangup'",
        )
        await until(lambda: "withdraw_key_bound" in caplog.text, "consented, recording", 20)
        await old.stop()
        await until(lambda: driver.leg("withdraw_idle-b") is not None, "over while down", 30)
        customer = driver.leg("withdraw_idle-b")
        assert customer is not None and customer.get("variable_callconsent_withdrawn") == "true"
        select = f"db select/callconsent_withdrawn/{customer.get('Unique-ID')}"
        assert (await driver.conn.api(select)).first_line == "1"  # mod_db outlives the leg
        (rec,) = rows(app, Recording)
        assert rec.state == "recording" and decision(app).status == "granted"
        book = CallBook(app.ledger, app.calls.policies, app.prompts)
        new = FreeswitchService(book, app.spool, old.settings)
        await new.start()
        try:
            await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded", 20)
            assert rows(app, Recording)[0].discard_reason == "consent_withdrawn"
            (change,) = [r for r in rows(app, ConsentRecord) if r.kind == "change"]
            assert (change.status, change.method) == ("withdrawn", "caller_withdrew_while_away")
            await until(lambda: rows(app, Call)[0].ended_at is not None, "ended", 20)
            assert (await driver.conn.api(select)).first_line == "-ERR no reply"  # removed
        finally:
            await new.stop()

    caplog.set_level("INFO", logger="callconsent")
    run(app, real, scenario)


def test_real_calls_from_before_a_daemon_restart_are_ended(  # type: ignore[no-untyped-def]
    app: App, real, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon stops during two recorded calls; one hangs up while it is down. The restarted
    daemon (a fresh memory) ends that one at its login and the other at its hangup."""

    async def scenario(driver: Driver, old: FreeswitchService) -> None:
        for hold_ms in (3000, 12000):
            await driver.originate(
                "cc_in_rt_withdraw_idle",
                f"'m:^:set:sleep_eat_digits=true^sleep:1200^send_dtmf:1^sleep:{hold_ms}^hangup'",
            )
        await until(
            lambda: caplog.text.count("withdraw_key_bound") == 2, "both consented, recording", 20
        )
        await old.stop()
        over = lambda: [e for e in driver.hangups if "withdraw_idle-b" in e.get("Channel-Name", "")]  # noqa: E731
        await until(lambda: len(over()) == 1, "the first call over while we are down", 20)
        assert all(c.ended_at is None for c in rows(app, Call))
        book = CallBook(app.ledger, app.calls.policies, app.prompts)
        new = FreeswitchService(book, app.spool, old.settings)
        await new.start()
        try:
            await until(
                lambda: sum(c.ended_at is not None for c in rows(app, Call)) == 1, "one ended", 20
            )
            assert new.registry.orphans.watches(over()[0].get("Unique-ID", "")) is False
            await until(lambda: len(over()) == 2, "the second call over", 30)
            await until(
                lambda: all(c.ended_at is not None for c in rows(app, Call)), "both ended", 20
            )
        finally:
            await new.stop()
        assert caplog.text.count("orphan_call_ended") == 2

    caplog.set_level("INFO", logger="callconsent")
    run(app, real, scenario)


def _admin_api(real: tuple[str, int, str, Path], command: str) -> str:
    """One ``api`` command as the admin, over a plain socket (before any service runs)."""
    from callconsent import doctor_host

    host, port, password, _conf = real
    with socket.create_connection((host, port), timeout=5) as s:
        s.recv(4096)  # auth/request
        s.sendall(f"auth {password}\n\n".encode())
        assert "+OK accepted" in doctor_host._block(s, b"\n\n")
        s.sendall(f"api {command}\n\n".encode())
        return doctor_host._api_body(s)


def test_real_doctor_names_a_freeswitch_without_mod_db(real) -> None:  # type: ignore[no-untyped-def]
    """doctor's probe (``api db select/…``) on the real wire: with mod_db loaded it is quiet;
    unloaded, FreeSWITCH answers ``-ERR db Command not found!`` and doctor names mod_db."""
    from callconsent import doctor_host

    host, port, password, _conf = real
    assert doctor_host._esl(host, port, "", password).level == "ok"
    assert _admin_api(real, "unload mod_db").startswith("+OK")
    try:
        finding = doctor_host._esl(host, port, "", password)
        assert finding.level == "warn" and "mod_db" in finding.message, finding
    finally:
        assert _admin_api(real, "load mod_db").startswith("+OK")
    assert doctor_host._esl(host, port, "", password).level == "ok"


def test_real_stale_withdraw_marks_are_removed_at_login(app: App, real) -> None:  # type: ignore[no-untyped-def]
    """A mark of no open call whose leg FreeSWITCH does not have (a crash left it) is gone
    after the service's login sweep (``db list``, ``uuid_exists``, ``db delete``)."""
    stale = str(uuid.uuid4())
    assert _admin_api(real, f"db insert/callconsent_withdrawn/{stale}/1").startswith("+OK")

    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        select = f"db select/callconsent_withdrawn/{stale}"
        for _ in range(100):  # the sweep runs after the login, beside this scenario
            if (await driver.conn.api(select)).first_line == "-ERR no reply":
                break
            await asyncio.sleep(0.1)
        assert (await driver.conn.api(select)).first_line == "-ERR no reply"

    run(app, real, scenario)
