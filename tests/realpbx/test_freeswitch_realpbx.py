"""The FreeSWITCH adapter against a real FreeSWITCH 1.10 (``CALLCONSENT_FREESWITCH``), with the
shipped dialplan and ESL user installed into its configuration: the same flows as the
simulator tests, driven by loopback calls.

``CALLCONSENT_FREESWITCH=esl://:ClueCon@127.0.0.1:8021?conf=<conf dir>`` (see /work/pbx). The
test adds two ``X-PRE-PROCESS include`` lines to the PBX's ``freeswitch.xml`` once
(``callconsent/dialplan/*.xml``, ``callconsent/directory/*.xml``), writes the rendered files
there, and ``reloadxml``. Our outbound server must listen on 127.0.0.1:8084, the address the
shipped dialplan dials. Loopback phones send DTMF with ``~``: plain ``send_dtmf`` marks digits
as already processed, so the far leg's ``bind_digit_action`` codes would never see them (a real
phone's RFC 2833 digits are not marked).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fake_pbx import make_prompts

from callconsent import config as config_mod
from callconsent.app import App
from callconsent.dialplan_render_freeswitch import render
from esl_listener.connection import EslConnection, open_inbound
from esl_listener.protocol import Event
from esl_listener.service import FreeswitchService
from recorder.live.callbook import CallBook
from recorder.store.models import Call, ConsentRecord, Recording

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]

TEST_DIALPLAN = """<include>
  <context name="callconsent_test">
    <extension name="cc_test_in">
      <condition field="destination_number" expression="^cc_in_([a-z_]+)_(\\w+)$">
        <action application="execute_extension" data="callconsent_in_$1 XML callconsent"/>
        <action application="bridge"
                data="{callconsent_agent=7001}loopback/cc_agent_$2/callconsent_test"/>
      </condition>
    </extension>
    <extension name="cc_agent_talk">
      <condition field="destination_number" expression="^cc_agent_talk$">
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=3;%(1000,0,880)"/>
        <action application="hangup"/>
      </condition>
    </extension>
    <extension name="cc_agent_codes">
      <condition field="destination_number" expression="^cc_agent_codes$">
        <action application="set" data="playback_terminators=none"/>
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*41"/>
        <action application="playback" data="tone_stream://L=2;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*42"/>
        <action application="playback" data="tone_stream://L=2;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*42"/>
        <action application="playback" data="tone_stream://L=2;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*43"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*49"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*41"/>
        <action application="playback" data="tone_stream://L=2;%(1000,0,880)"/>
        <action application="hangup"/>
      </condition>
    </extension>
    <extension name="cc_agent_late">
      <condition field="destination_number" expression="^cc_agent_late$">
        <action application="set" data="playback_terminators=none"/>
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=4;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*41"/>
        <action application="playback" data="tone_stream://L=3;%(1000,0,880)"/>
        <action application="hangup"/>
      </condition>
    </extension>
    <extension name="cc_agent_idle">
      <condition field="destination_number" expression="^cc_agent_idle$">
        <action application="set" data="playback_terminators=none"/>
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=9;%(1000,0,880)"/>
        <action application="hangup"/>
      </condition>
    </extension>
  </context>
</include>
"""
CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-realfs"
[freeswitch]
enabled = true
[policies.default]
digit_timeout_ms = 2500
[policies.rt_sales]
monitoring_allowed = true
[policies.rt_ondemand]
mode = "on_demand"
[policies.rt_withdraw]
withdraw_digit = "9"
monitoring_allowed = true
"""
CALLER = "{origination_caller_id_number=4915112345}"


def _endpoint() -> tuple[str, int, str, Path]:
    url = os.environ.get("CALLCONSENT_FREESWITCH")
    if not url:
        pytest.skip("CALLCONSENT_FREESWITCH is not set (no real FreeSWITCH to test against)")
    parts = urlsplit(url)
    conf = parse_qs(parts.query).get("conf", [""])[0]
    host, port = parts.hostname or "127.0.0.1", parts.port or 8021
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"FreeSWITCH at {host}:{port} does not answer: {exc}")
    with contextlib.closing(socket.socket()) as probe:
        if probe.connect_ex(("127.0.0.1", 8084)) == 0:
            pytest.skip("127.0.0.1:8084 is taken: the shipped dialplan dials our server there")
    if not conf or not Path(conf, "freeswitch.xml").is_file():
        pytest.skip(f"no freeswitch.xml under conf={conf!r} in CALLCONSENT_FREESWITCH")
    return host, port, parts.password or "ClueCon", Path(conf)


def _install(conf: Path, app: App) -> None:
    """Our files into the PBX config (idempotent), then the include lines once."""
    rendered = render(app.config, app.config.data_dir / "fs")
    (conf / "callconsent" / "dialplan").mkdir(parents=True, exist_ok=True)
    (conf / "callconsent" / "directory").mkdir(parents=True, exist_ok=True)
    for path in rendered:
        if path.name == "callconsent.xml":
            (conf / "callconsent/dialplan/callconsent.xml").write_text(path.read_text())
        elif path.name == "callconsent-esl-user.xml":
            (conf / "callconsent/directory/callconsent.xml").write_text(path.read_text())
    (conf / "callconsent/dialplan/zz-test.xml").write_text(TEST_DIALPLAN)
    main = conf / "freeswitch.xml"
    text = main.read_text()
    if "callconsent/dialplan/*.xml" not in text:
        text = text.replace(
            '<section name="dialplan" description="Regex/XML Dialplan">',
            '<section name="dialplan" description="Regex/XML Dialplan">\n'
            '    <X-PRE-PROCESS cmd="include" data="callconsent/dialplan/*.xml"/>',
            1,
        )
    if "callconsent/directory/*.xml" not in text:
        text = text.replace(
            "</users>",
            '<X-PRE-PROCESS cmd="include" data="callconsent/directory/*.xml"/>\n      </users>',
            1,
        )
    main.write_text(text)


@pytest.fixture(scope="module")
def real() -> Iterator[tuple[str, int, str, Path]]:
    yield _endpoint()


@pytest.fixture
def app(tmp_path: Path, real: tuple[str, int, str, Path]) -> Iterator[App]:
    password = "rt-" + secrets.token_hex(8)
    path = tmp_path / "callconsent.toml"
    path.write_text(
        CONFIG.replace(
            "[freeswitch]\nenabled = true",
            f'[freeswitch]\nenabled = true\nesl_user = "callconsent@127.0.0.1"\n'
            f'esl_password = "{password}"\nesl_port = {real[1]}',
        )
    )
    application = App.open(config_mod.load(path))
    make_prompts(application.config.prompt_dir, ("en",))
    application.prompts.reload()
    _install(real[3], application)
    yield application
    application.close()


class Driver:
    """Our admin connection: reloadxml, originate, and every CHANNEL_HANGUP_COMPLETE, DTMF and
    callconsent CUSTOM event seen."""

    def __init__(self, conn: EslConnection) -> None:
        self.conn = conn
        self.hangups: list[Event] = []
        self.events: list[Event] = []
        conn.add_listener(self._on)

    def _on(self, event: Event) -> None:
        if event.name == "CHANNEL_HANGUP_COMPLETE":
            self.hangups.append(event)
        elif event.name in ("DTMF", "CUSTOM"):
            self.events.append(event)

    def seen(self, name: str, channel_part: str) -> list[str]:
        """``cc_cmd`` of the CUSTOM events (``DTMF-Digit`` of DTMF) from that channel."""
        key = "cc_cmd" if name == "CUSTOM" else "DTMF-Digit"
        return [
            e.get(key) or ""
            for e in self.events
            if e.name == name and channel_part in (e.get("Channel-Name") or "")
        ]

    async def originate(self, dest: str, app: str) -> str:
        reply = await self.conn.api(
            f"originate {CALLER}loopback/{dest}/callconsent_test {app} inline", 30
        )
        assert reply.ok, reply.text
        return reply.text.split()[1]

    def leg(self, name_part: str) -> Event | None:
        return next((e for e in self.hangups if name_part in (e.get("Channel-Name") or "")), None)


async def until(check, what: str, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 20)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def run(app: App, real: tuple[str, int, str, Path], scenario) -> None:  # type: ignore[no-untyped-def]
    host, port, admin_pw, _ = real

    async def main() -> None:
        admin = await open_inbound(host, port, admin_pw)
        driver = Driver(admin)
        assert (await admin.api("reloadxml")).ok
        await admin.send(
            "event plain CHANNEL_HANGUP_COMPLETE DTMF CUSTOM consent::agent_cmd consent::withdraw"
        )
        svc = FreeswitchService.from_config(app.calls, app.spool, app.config.freeswitch)
        await svc.start()
        try:
            await until(lambda: svc.inbound.connected.is_set(), "userauth as callconsent")
            assert svc.inbound.refused_subscriptions == []
            await scenario(driver, svc)
        finally:
            await svc.stop()
            await admin.close()

    asyncio.run(main())


def rows(app: App, model: type) -> list:
    with app.db.read() as s:
        return list(s.scalars(sa.select(model)))


def decision(app: App) -> ConsentRecord:
    return next(r for r in rows(app, ConsentRecord) if r.kind == "decision")


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

    run(app, real, scenario)


def test_real_hangup_in_the_prompt(app: App, real) -> None:  # type: ignore[no-untyped-def]
    async def scenario(driver: Driver, svc: FreeswitchService) -> None:
        await driver.originate("cc_in_default_talk", "'m:^:sleep:300^hangup'")
        await until(lambda: bool(rows(app, ConsentRecord)), "decision", 20)
        d = decision(app)
        assert (d.status, d.method) == ("no_input", "hangup")
        await until(lambda: rows(app, Call)[0].ended_at is not None, "ended")
        assert rows(app, Recording) == []

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
