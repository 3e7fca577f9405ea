"""Capture, on a real FreeSWITCH, the frames the agent codes and the caller's withdraw key rely
on, in the bridge capture format ``tests/fs_captures.py`` reads (the fixture
``tests/fixtures/freeswitch/bridge/s7_bind_digit_action`` was made with it).

Run by hand against a lab PBX (never by pytest)::

    CALLCONSENT_FREESWITCH='esl://:ClueCon@127.0.0.1:8021?conf=/path/to/conf' \\
        .venv/bin/python tests/fs_capture_codes.py OUTDIR

What it does: installs the shipped ``dialplan/freeswitch/callconsent.xml`` under a context of
its own (``cccap``, so a callconsent context already on the PBX is left alone) pointing at a
raw outbound-socket server of this script, plus a test context; originates one loopback call:

* the customer's outbound-socket session: ``answer``, ``export consent_status=granted``,
  ``bind_digit_action callconsent_withdraw,9,…`` (what callconsent sends on consent), ``exit``;
* the dialplan bridges to an agent whose phone sends ``*41 *42 *42 *43 *49`` and ``9``;
* the customer's phone sends ``*41`` (must trigger nothing) and later ``9`` (the withdraw key).

Loopback's ``send_dtmf`` marks digits "already processed" (``DTMF_FLAG_SKIP_PROCESS``), so digit
bindings on the far leg never see them; a ``~`` prefix clears the flag, which is what a phone's
RFC 2833 / SIP INFO digits look like to FreeSWITCH (``switch_channel_queue_dtmf_string``).

Writes ``inbound-monitor.full`` (``event plain ALL``), ``outbound-01.full`` (our session),
``inbound-control.full`` (reloadxml, originate) and ``driver.log``; removes its dialplan file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.parse
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from esl_listener import protocol as p

T0 = time.monotonic()
LOG: list[str] = []
SHIPPED = Path(__file__).resolve().parents[2] / "dialplan" / "freeswitch" / "callconsent.xml"
CONTEXT = "cccap"
TEST_CONTEXT = """
  <context name="ccct">
    <extension name="cccap_customer">
      <condition field="destination_number" expression="^cccap_customer$">
        <action application="execute_extension" data="callconsent_in_capture XML cccap"/>
        <action application="bridge" data="{callconsent_agent=7001}loopback/cccap_agent/ccct"/>
      </condition>
    </extension>
    <extension name="cccap_agent">
      <condition field="destination_number" expression="^cccap_agent$">
        <action application="set" data="playback_terminators=none"/>
        <action application="answer"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*41"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*42"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*42"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*43"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~*49"/>
        <action application="playback" data="tone_stream://L=1;%(1000,0,880)"/>
        <action application="send_dtmf" data="~9"/>
        <action application="playback" data="tone_stream://L=4;%(1000,0,880)"/>
        <action application="hangup"/>
      </condition>
    </extension>
  </context>
"""
CUSTOMER_PHONE = "'m:^:sleep:2500^send_dtmf:~*41^sleep:5000^send_dtmf:~9^sleep:3000^hangup'"
WITHDRAW_BINDING = (
    f"callconsent_withdraw,9,exec[H]:execute_extension,callconsent_withdraw XML {CONTEXT}"
)


SUMMARY_KEYS = (
    "Unique-ID",
    "Channel-Name",
    "Channel-Call-UUID",
    "Channel-State",
    "Answer-State",
    "Event-Subclass",
    "cc_cmd",
    "cc_agent",
    "DTMF-Digit",
    "Other-Leg-Unique-ID",
    "Application",
    "Application-Data",
    "Application-UUID",
    "Application-Response",
)


class Wire:
    """One raw ESL connection: every byte to ``<name>.full``, a summary of each frame (events
    decoded with :func:`urllib.parse.unquote`, not by our parser) to ``<name>.log``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, full: Path):
        self.reader, self.writer = reader, writer
        self.file = full.open("wb")
        self.log = full.with_suffix(".log").open("w")

    def _t(self) -> str:
        return f"[{time.monotonic() - T0:8.3f}]"

    async def send(self, data: bytes) -> None:
        self.file.write(f">>> {self._t()} sent {len(data)} bytes:\n".encode() + data + b"\n")
        self.log.write(f"{self._t()} >>> {data.decode()!r}\n")
        self.writer.write(data)
        await self.writer.drain()

    def _summary(self, head: bytes, body: bytes) -> None:
        headers = " | ".join(head.decode().strip("\n").split("\n"))
        if b"Content-Type: text/event-plain" not in head:
            self.log.write(f"{self._t()} <<< FRAME {headers}\n")
            return
        ev = event_fields(body)
        if ev.get("Event-Name") in ("HEARTBEAT", "RE_SCHEDULE"):
            return  # they belong to no channel (the earlier captures left them out too)
        kept = {k: ev[k] for k in SUMMARY_KEYS if k in ev}
        self.log.write(f"{self._t()} <<< EVENT {ev.get('Event-Name')} {kept!r}\n")

    async def frame(self) -> tuple[dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\n\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip("\n").split("\n") if ": " in line
        )
        body = b""
        if "Content-Length" in headers:
            body = await self.reader.readexactly(int(headers["Content-Length"]))
        self.file.write(f"=== {self._t()} <<< received\n".encode() + head + body + b"\n")
        self._summary(head, body)
        return headers, body

    def close(self) -> None:
        self.file.close()
        self.log.close()

    async def command(self, line: str) -> bytes:
        await self.send(f"{line}\n\n".encode())
        while True:
            headers, body = await self.frame()
            if headers.get("Content-Type") in ("command/reply", "api/response"):
                return body or headers.get("Reply-Text", "").encode()


def log(text: str) -> None:
    LOG.append(f"[{time.monotonic() - T0:8.3f}] {text}")
    print(LOG[-1])


def event_fields(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.decode().split("\n"):
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, urllib.parse.unquote(v))
    return out


async def inbound(host: str, port: int, password: str, full: Path) -> Wire:
    reader, writer = await asyncio.open_connection(host, port)
    wire = Wire(reader, writer, full)
    await wire.frame()
    reply = await wire.command(f"auth {password}")
    assert b"+OK" in reply, reply
    return wire


async def outbound_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    wire = Wire(reader, writer, OUT / "outbound-01.full")
    await wire.send(b"connect\n\n")
    headers, _ = await wire.frame()
    log(f"outbound: connect from {headers.get('Channel-Name')} uuid={headers.get('Unique-ID')}")
    for line in ("myevents", "linger"):
        await wire.send(f"{line}\n\n".encode())
        await wire.frame()
    steps = [
        ("answer", None),
        ("export", "consent_status=granted"),
        ("bind_digit_action", WITHDRAW_BINDING),
    ]
    for n, (app, arg) in enumerate(steps):
        uid = f"00000000-0000-4000-8000-00000000000{n}"
        await wire.send(p.execute(app, arg, event_uuid=uid))
        while True:
            headers, body = await wire.frame()
            ev = event_fields(body) if body else {}
            if ev.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE" and ev.get(
                "Application-UUID"
            ) == (uid):
                log(f"outbound: {app} complete: {ev.get('Application-Response')}")
                break
    await wire.send(b"exit\n\n")
    try:
        while True:
            headers, _ = await wire.frame()
    except (asyncio.IncompleteReadError, ConnectionError):
        log("outbound: closed by FreeSWITCH after exit")
    writer.close()
    wire.close()


async def main(out: Path) -> None:
    url = urlsplit(os.environ["CALLCONSENT_FREESWITCH"])
    conf = Path(parse_qs(url.query)["conf"][0])
    host, port, password = url.hostname or "127.0.0.1", url.port or 8021, url.password or "ClueCon"
    server = await asyncio.start_server(outbound_session, "127.0.0.1", 0)
    sock_port = server.sockets[0].getsockname()[1]
    shipped = SHIPPED.read_text()
    body = shipped[shipped.index("<context") : shipped.rindex("</context>") + len("</context>")]
    body = body.replace('<context name="callconsent">', f'<context name="{CONTEXT}">')
    body = body.replace(" XML callconsent", f" XML {CONTEXT}")
    body = body.replace("127.0.0.1:8084/", f"127.0.0.1:{sock_port}/")
    target = conf / "callconsent" / "dialplan" / "zz-capture-codes.xml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"<include>\n  {body}\n{TEST_CONTEXT}</include>\n")
    monitor = await inbound(host, port, password, out / "inbound-monitor.full")
    control = await inbound(host, port, password, out / "inbound-control.full")
    ended: set[str] = set()
    try:
        await monitor.command("event plain ALL")
        log(f"control: reloadxml -> {(await control.command('api reloadxml')).decode().strip()}")

        async def watch() -> None:
            while True:
                _, body = await monitor.frame()
                ev = event_fields(body) if body else {}
                name, chan = ev.get("Event-Name"), ev.get("Channel-Name")
                if name == "CUSTOM":
                    log(
                        f"CUSTOM {ev.get('Event-Subclass')} cc_cmd={ev.get('cc_cmd')} from {chan} "
                        f"Unique-ID={ev.get('Unique-ID')} Channel-Call-UUID="
                        f"{ev.get('Channel-Call-UUID')}"
                    )
                elif name == "DTMF":
                    log(f"DTMF {ev.get('DTMF-Digit')!r} on {chan}")
                elif name == "CHANNEL_HANGUP_COMPLETE":
                    ended.add(ev.get("Unique-ID", ""))
                    log(f"HANGUP_COMPLETE {chan}")

        watcher = asyncio.create_task(watch())
        reply = await control.command(
            "api originate {origination_caller_id_number=4915112345,sleep_eat_digits=true}"
            f"loopback/cccap_customer/ccct {CUSTOMER_PHONE} inline"
        )
        log(f"control: originate -> {reply.decode().strip()}")
        for _ in range(300):
            if len(ended) >= 4:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        watcher.cancel()
        log(f"legs ended: {len(ended)}")
    finally:
        target.unlink(missing_ok=True)
        log(f"control: reloadxml -> {(await control.command('api reloadxml')).decode().strip()}")
        server.close()
        monitor.close()
        control.close()
        (out / "driver.log").write_text("\n".join(LOG) + "\n")


if __name__ == "__main__":
    OUT = Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(OUT))
