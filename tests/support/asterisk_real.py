"""Driving a real Asterisk for the ``realpbx`` tests: the lab it offers, and loading our files
into it.

``CALLCONSENT_ASTERISK=ami://user:secret@host:port?conf=<etc dir>&spool=<dir>`` names a running
Asterisk whose ``extensions.conf``, ``features.conf`` (inside ``[applicationmap]``) and
``manager.conf`` ``#tryinclude`` the drop-ins ``extensions_callconsent.conf``,
``features_callconsent.conf`` and ``manager_callconsent.conf`` (see ``/opt/pbx/README.txt``);
for the Queue tests, app_queue loaded and ``queues.conf`` including ``queues_callconsent.conf``.
The AMI user there must have ``write=all`` (the test originates calls and reloads modules).

:func:`open_lab` loads our rendered files into those drop-ins, plus the test contexts of
``asterisk_real_contexts.conf`` (the customer's, agent's and supervisor's phones, as Local
channels like in the captures), a test queue, and the test sounds (tones standing in for speech,
and the ``beep`` MixMonitor's ``B()`` plays); it puts every file back as it was afterwards.

The lab's own ``extensions.conf`` already defines ``[callconsent-inbound]`` and feature names
``ccstart``/``ccpause``/``ccstop`` (from the captures), which would shadow ours; the test
therefore loads our files with those names prefixed (``t-callconsent-…``, ``tccstart``…),
nothing else changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import socket
import struct
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agi.dialplan import DialplanSettings, render

ENV = "CALLCONSENT_ASTERISK"
DROP_INS = ("extensions_callconsent.conf", "features_callconsent.conf", "manager_callconsent.conf")
QUEUE_DROP_IN = "queues_callconsent.conf"
QUEUE = "cct-support"
CONTEXTS = Path(__file__).with_name("asterisk_real_contexts.conf")
# the test sounds: (name, seconds, Hz); the beep is what MixMonitor's B() plays
SOUNDS = (
    ("cct-caller-speech", 2.0, 440),
    ("cct-agent-speech", 2.0, 660),
    ("cct-wait-tone", 0.2, 880),
    ("beep", 0.25, 1400),
)
RELOAD = ("dialplan reload", "module reload features", "manager reload")
LOCK = ".callconsent-realpbx.lock"  # in the conf dir: one test run at a time changes the drop-ins
LOCK_WAIT_S = 900


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


@dataclass(frozen=True)
class Lab:
    target: RealAsterisk
    agi_port: int
    ami_user: str
    ami_secret: str
    system_user: str
    system_secret: str
    queue: str | None  # why not: see queue_missing
    queue_missing: str = ""


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


def with_system_user(manager_conf: str, secret: str) -> str:
    """The shipped ``manager_callconsent.conf`` with its opt-in write=system user uncommented,
    exactly as the README tells an admin to (only the secret filled in)."""
    head, sep, tail = manager_conf.partition(";[")
    assert sep, "the shipped file has no commented-out system user"
    lines = []
    for line in (sep + tail).splitlines():
        if (line.startswith(";") and "=" in line) or line.startswith(";["):
            line = line[1:]
        if line.startswith("secret"):
            line = f"secret = {secret}"
        lines.append(line)
    return head + "\n".join(lines) + "\n"


def tone_wav(seconds: float, freq: int, level: int = 4000) -> bytes:
    """A tone standing in for speech, 8 kHz 16-bit (Local channels record while frames flow)."""
    from asterisk_sim import wav_header

    n = int(seconds * 8000)
    data = b"".join(
        struct.pack("<h", int(level * math.sin(2 * math.pi * freq * i / 8000))) for i in range(n)
    )
    return wav_header(len(data)) + data


def new_secret() -> str:
    return secrets.token_hex(12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ami_command(target: RealAsterisk, *commands: str) -> list[str]:
    """Run CLI commands over AMI as the test user (blocking; for setup and teardown)."""
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


def why_not_reachable(target: RealAsterisk | None) -> str | None:
    """The reason the realpbx tests cannot run against ``target``, or None."""
    if target is None:
        return f"{ENV} is not set: no real Asterisk to test against"
    try:
        ami_command(target, "core show version")
    except (OSError, RuntimeError) as exc:
        return f"the Asterisk AMI at {target.host}:{target.port} does not answer: {exc}"
    missing = [n for n in DROP_INS if not (target.conf / n).exists()]
    if missing:
        return f"{target.conf} has no drop-in files {missing} to load our dialplan into"
    return None


def _queue_support(target: RealAsterisk) -> str:
    """Why the Queue tests cannot run here ('' if they can)."""
    out = "\n".join(ami_command(target, "module show like app_queue"))
    if "app_queue.so" not in out:
        return "app_queue is not loaded in this Asterisk (the lab's modules.conf has noload)"
    queues = target.conf / "queues.conf"
    if not queues.exists() or QUEUE_DROP_IN not in queues.read_text():
        return f"{queues} does not #tryinclude {QUEUE_DROP_IN}"
    return ""


QUEUE_CONF = f"""; the test queue of tests/support/asterisk_real.py (removed after the test run)
[{QUEUE}]
strategy = ringall
timeout = 30
retry = 1
ringinuse = yes
joinempty = yes
member => Local/agent-ring@cct-agents/n
"""


@contextlib.contextmanager
def lab_lock(target: RealAsterisk) -> Iterator[None]:
    """The drop-ins are shared by every checkout testing against this PBX: a second run that
    loads its own files (another AMI secret, another FastAGI port) under a running one breaks
    both, and could "restore" the other's files. So runs take turns (an advisory lock)."""
    import time

    with open(target.conf / LOCK, "a+") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() > deadline:
                    msg = f"another test run held {f.name} for {LOCK_WAIT_S} s"
                    raise TimeoutError(msg) from exc
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_lab(target: RealAsterisk) -> Iterator[Lab]:
    """Our files (and the test contexts, queue and sounds) loaded into ``target``; every
    file put back as it was afterwards. Holds :func:`lab_lock` meanwhile."""
    with lab_lock(target), _loaded(target) as lab:
        yield lab


@contextlib.contextmanager
def _loaded(target: RealAsterisk) -> Iterator[Lab]:
    agi_port = free_port()
    queue_missing = _queue_support(target)
    lab = Lab(
        target,
        agi_port,
        "callconsent-test",
        new_secret(),
        "callconsent-system",
        new_secret(),
        None if queue_missing else QUEUE,
        queue_missing,
    )
    files = prefixed(
        render(
            DialplanSettings(
                agi_port=agi_port,
                spool=str(target.spool),
                ami_user=lab.ami_user,
                ami_secret=lab.ami_secret,
                ami_system_user=lab.system_user,
            )
        )
    )
    files["extensions_callconsent.conf"] += CONTEXTS.read_text().replace(
        "@AGI_URL@", f"agi://127.0.0.1:{agi_port}"
    )
    files["manager_callconsent.conf"] = with_system_user(
        files["manager_callconsent.conf"], lab.system_secret
    )
    names = list(DROP_INS) + ([QUEUE_DROP_IN] if not queue_missing else [])
    if not queue_missing:
        files[QUEUE_DROP_IN] = QUEUE_CONF
    saved = {n: (target.conf / n).read_text() for n in names}
    reload = RELOAD + (("queue reload all",) if not queue_missing else ())
    sounds = target.sounds
    sounds.mkdir(parents=True, exist_ok=True)
    placed = []
    for name, seconds, freq in SOUNDS:
        path = sounds / f"{name}.wav"
        if not path.exists():  # never replace a sound the PBX has of its own (a real beep)
            path.write_bytes(tone_wav(seconds, freq))
            placed.append(path)
    try:
        for name in names:
            (target.conf / name).write_text(files[name])
        ami_command(target, *reload)
        yield lab
    finally:
        for name, text in saved.items():
            (target.conf / name).write_text(text)
        ami_command(target, *reload)
        for path in placed:
            path.unlink(missing_ok=True)
