# ruff: noqa: E501 - the embedded dialplan has long lines, as Asterisk dialplans do
"""Driving a real Asterisk for the ``realpbx`` tests.

``CALLCONSENT_ASTERISK=ami://user:secret@host:port?conf=<etc dir>&spool=<dir>`` names a running
Asterisk whose ``extensions.conf``, ``features.conf`` (inside ``[applicationmap]``) and
``manager.conf`` ``#tryinclude`` the drop-ins ``extensions_callconsent.conf``,
``features_callconsent.conf`` and ``manager_callconsent.conf`` (see ``/work/pbx/README.md``).
The AMI user there must have ``write=all`` (the test originates calls and reloads modules).

The test loads our rendered files into those drop-ins, plus test contexts that play the
customer's and the agent's phones (Local channels, as in the captures), and puts the test
sounds where that Asterisk finds them. Everything is restored afterwards.

The lab's own ``extensions.conf`` already defines ``[callconsent-inbound]`` and feature names
``ccstart``/``ccpause``/``ccstop`` (from the captures), which would shadow ours; the test
therefore loads our files with those names prefixed (``t-callconsent-…``, ``tccstart``…),
nothing else changed.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ENV = "CALLCONSENT_ASTERISK"


@dataclass(frozen=True)
class RealAsterisk:
    host: str
    port: int
    user: str
    secret: str
    conf: Path
    spool: Path

    @property
    def sounds(self) -> Path:
        text = (self.conf / "asterisk.conf").read_text()
        m = re.search(r"^astdatadir\s*=>\s*(\S+)", text, re.M)
        return Path(m.group(1) if m else "/var/lib/asterisk") / "sounds"


def from_environment() -> RealAsterisk | None:
    url = os.environ.get(ENV)
    if not url:
        return None
    u = urllib.parse.urlparse(url)
    q = urllib.parse.parse_qs(u.query)
    return RealAsterisk(
        u.hostname or "127.0.0.1",
        u.port or 5038,
        urllib.parse.unquote(u.username or ""),
        urllib.parse.unquote(u.password or ""),
        Path(q.get("conf", ["/etc/asterisk"])[0]),
        Path(q.get("spool", ["/var/spool/asterisk"])[0]),
    )


def prefixed(files: dict[str, str]) -> dict[str, str]:
    """Our files with the context and feature names the lab config already uses renamed."""
    out = {}
    for name, text in files.items():
        text = re.sub(
            r"\bcallconsent-(inbound|agent|outbound|answer|listen)", r"t-callconsent-\1", text
        )
        text = re.sub(r"\bcc(start|pause|stop|discard)\b", r"tcc\1", text)
        out[name] = text
    return out


TEST_CONTEXTS = """
; ---- test contexts of tests/test_asterisk_realpbx.py (removed after the test run) ----
[cct-in]
; the customer leg (Local ;2): Gosub into our inbound subroutine, report, then an agent or hold
exten => cust,1,Answer()
 same => n,Set(CHANNEL(hangup_handler_push)=cct-end,s,1)
 same => n,Gosub(t-callconsent-inbound,s,1(${CAMPAIGN}))
 same => n,UserEvent(CCTest,Token: ${CCTOKEN},Uniqueid: ${UNIQUEID},Status: ${CONSENT_STATUS},Agistatus: ${AGISTATUS},Retval: ${GOSUB_RETVAL},Rec: ${CONSENT_RECORDING_ID},Mixmon: ${MIXMON_ID})
 same => n,GotoIf($["${AGENT}" = ""]?hold)
 same => n,Dial(Local/${AGENT}@cct-agents/n,30,b(t-callconsent-agent-predial^s^1)U(t-callconsent-agent^s^1))
 same => n,Hangup()
 same => n(hold),Wait(${HOLD})
 same => n,Hangup()

[cct-end]
; a hangup handler: runs wherever the customer leg hangs up (in a Gosub, there is no h of ours)
exten => s,1,UserEvent(CCTestEnd,Token: ${CCTOKEN},Status: ${CONSENT_STATUS},Features: ${DYNAMIC_FEATURES},End: 1)
 same => n,Return()

[cct-phone]
; the customer's phone (Local ;1)
exten => accept,1,Wait(1)
 same => n,SendDTMF(1)
 same => n,Playback(cct-caller-speech)
 same => n,Wait(${TALK})
 same => n,Hangup()
exten => decline,1,Wait(1)
 same => n,SendDTMF(2)
 same => n,Wait(${TALK})
 same => n,Hangup()
exten => silence,1,Wait(${TALK})
 same => n,Hangup()
exten => early,1,Wait(0.8)
 same => n,Hangup()
exten => talkhang,1,Wait(1)
 same => n,SendDTMF(1)
 same => n,Playback(cct-caller-speech)
 same => n,Playback(cct-caller-speech)
 same => n,Hangup()
exten => talkloop,1,Wait(1)
 same => n,SendDTMF(1)
 same => n(loop),Playback(cct-caller-speech)
 same => n,SendDTMF(*41)
 same => n,Goto(loop)

[cct-agents]
; the agent's phone (Local ;2): its DTMF reaches the agent leg, where the codes are enabled
exten => agent-feat,1,Wait(0.3)
 same => n,Answer()
 same => n,Playback(cct-agent-speech)
 same => n,SendDTMF(*42)
 same => n,Playback(cct-agent-speech)
 same => n,SendDTMF(*42)
 same => n,Playback(cct-agent-speech)
 same => n,SendDTMF(*43)
 same => n,Wait(1.5)
 same => n,SendDTMF(*41)
 same => n,Playback(cct-agent-speech)
 same => n,SendDTMF(*49)
 same => n,Wait(1.5)
 same => n,SendDTMF(*41)
 same => n,Wait(1.5)
 same => n,Hangup()
"""


def speech_wav(seconds: float, freq: int) -> bytes:
    """A tone standing in for speech, 8 kHz 16-bit (Local channels record while frames flow)."""
    import math

    from asterisk_sim import wav_header

    n = int(seconds * 8000)
    data = b"".join(
        struct.pack("<h", int(4000 * math.sin(2 * math.pi * freq * i / 8000))) for i in range(n)
    )
    return wav_header(len(data)) + data


def new_secret() -> str:
    return secrets.token_hex(12)


def ami_command(target: RealAsterisk, *commands: str) -> list[str]:
    """Run CLI commands over AMI as the test user (blocking; for setup and teardown)."""
    import socket

    out: list[str] = []
    with socket.create_connection((target.host, target.port), timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()

        def send(**headers: str) -> list[str]:
            f.write("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n")
            f.flush()
            while True:
                lines = []
                while (line := f.readline().decode()) not in ("\r\n", "\n", ""):
                    lines.append(line.rstrip("\r\n"))
                if not line or (lines and lines[0].startswith("Response")):
                    return lines

        reply = send(Action="Login", Username=target.user, Secret=target.secret, Events="off")
        if "Response: Success" not in reply:
            raise RuntimeError(f"AMI login as {target.user} failed: {reply}")
        for command in commands:
            out += send(Action="Command", Command=command)
        send(Action="Logoff")
    return out
