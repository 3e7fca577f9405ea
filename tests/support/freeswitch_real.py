"""A real FreeSWITCH 1.10 for the ``realpbx`` tests (``CALLCONSENT_FREESWITCH``), with the
shipped dialplan and ESL user installed into its configuration, driven by loopback calls.

``CALLCONSENT_FREESWITCH=esl://:ClueCon@127.0.0.1:8021?conf=<conf dir>`` (see /opt/pbx). The
harness adds two ``X-PRE-PROCESS include`` lines to the PBX's ``freeswitch.xml`` once
(``callconsent/dialplan/*.xml``, ``callconsent/directory/*.xml``), writes the rendered files
there, and ``reloadxml``. Our outbound server must listen on 127.0.0.1:8084, the address the
shipped dialplan dials. Loopback phones send DTMF with ``~``: plain ``send_dtmf`` marks digits
as already processed, so the far leg's ``bind_digit_action`` codes would never see them (a real
phone's RFC 2833 digits are not marked).

FreeSWITCH must run as its own account (``freeswitch -u freeswitch``), as in production: the
spool and prompts are handed to it the way an admin does (a 2770 directory of a group it is
in, see :mod:`pbx_account`), never the test's 0700 temp dir; a FreeSWITCH running as root
fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fake_pbx import make_prompts
from pbx_account import hand_over, pbx_dir, require_unprivileged

from callconsent import config as config_mod
from callconsent.app import App
from callconsent.dialplan_render_freeswitch import render
from esl_listener.connection import EslConnection, open_inbound
from esl_listener.protocol import Event
from esl_listener.service import FreeswitchService
from recorder.store.models import ConsentRecord

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
    <extension name="cc_agent_hold">
      <condition field="destination_number" expression="^cc_agent_hold$">
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=120;%(1000,0,880)"/>
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
Real = tuple[str, int, str, Path]  # host, ESL port, admin password, conf dir


def endpoint() -> Real:
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
    install(conf, app.config, app.config.data_dir / "fs")


def install(conf: Path, cfg: config_mod.Config, out: Path) -> None:
    """Our files (rendered into ``out``) into the PBX config (idempotent), then the include
    lines once."""
    rendered = render(cfg, out)
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


@contextlib.contextmanager
def open_app(tmp_path: Path, real: Real, config: str = CONFIG) -> Iterator[App]:
    """An App whose spool and prompts FreeSWITCH's own account can reach, our files
    installed into the PBX; closed (and those directories removed) afterwards."""
    account = require_unprivileged(real[1], "freeswitch")
    password = "rt-" + secrets.token_hex(8)
    path = tmp_path / "callconsent.toml"
    with pbx_dir(account, "fs-spool") as spool, pbx_dir(account, "fs-prompts") as prompts:
        path.write_text(
            config.replace(
                "[freeswitch]\nenabled = true",
                f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
                f'[freeswitch]\nenabled = true\nesl_user = "callconsent@127.0.0.1"\n'
                f'esl_password = "{password}"\nesl_port = {real[1]}',
            )
        )
        application = App.open(config_mod.load(path))
        make_prompts(application.config.prompt_dir, ("en",))
        hand_over(prompts, account)
        application.prompts.reload()
        _install(real[3], application)
        try:
            yield application
        finally:
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
