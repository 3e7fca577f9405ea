"""Faults on the real PBXs while real calls record (issue 17, point 3): `callconsent serve` as
its own account in its own process (:mod:`daemon_process`), with its finalizer reconciling
every second, against the real Asterisk (:mod:`asterisk_real`) or FreeSWITCH
(:mod:`freeswitch_real`); the test breaks the PBX, the connection, the disk or the database
under it, and then reads what the daemon left: rows, files, log lines, decrypted bytes.

Restarting a PBX follows /opt/pbx/README.txt: each starts as its OWN account, never with a
group flag (``-G``/``-g`` would drop the supplementary group ``callconsent`` and with it the
shared spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from asterisk_real import Lab
from asterisk_real_harness import write_prompts
from cli_host import PASSPHRASE, free_port
from daemon_cli import run as cli
from daemon_process import USER, daemon_home, keys_init, serving, write_config
from panoramisk.message import Message

from agi.ami import AmiClient, AmiError, AmiUnavailable
from recorder.store.models import AuditEntry, Recording

ASTERISK = "/usr/sbin/asterisk"
ASTERISK_PID = Path("/var/run/asterisk/asterisk.pid")
FREESWITCH = "/usr/local/freeswitch/bin/freeswitch"
FS_CLI = "/usr/local/freeswitch/bin/fs_cli"
FREESWITCH_PID = Path("/usr/local/freeswitch/run/freeswitch.pid")
#: the reconciliation the faults rely on, made quick (the defaults are 60 s and 30 s)
RECORDER = "[recorder]\nreconcile_interval_s = 1.0\nsettle_s = 2.0\n"


def wait_for(check: Callable[[], object], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {seconds} s: {what}")
        time.sleep(0.2)


async def until(check: Callable[[], object], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {seconds} s: {what}")
        await asyncio.sleep(0.1)


# -- the daemon ----------------------------------------------------------------------------


@dataclass
class Daemon:
    home: Path
    config: Path
    log: Path
    spool: Path
    url: str  # the store's SQLAlchemy URL
    proc: subprocess.Popen[bytes] | None = None
    _engine: sa.Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        return self._engine

    def rows(self, model: type) -> list:  # type: ignore[type-arg]
        """Every row of ``model``, read beside the running daemon (read-only)."""
        with self.engine.connect() as c:
            return list(c.execute(sa.select(model.__table__)))

    def states(self) -> list[str]:
        return sorted(r.state for r in self.rows(Recording))

    def said(self) -> list[tuple[str, str]]:
        """(level, event) of every log line so far."""
        return re.findall(r"^\S+ (\w+) \S+ event=(\S+)", self.log.read_text(), re.M)

    def lines(self, event: str) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if f" event={event} " in ln + " "]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli("realpbx-faults", self.config, PASSPHRASE, *args, check=check)

    def audited(self, action: str) -> list[str]:
        return [r.subject_id for r in self.rows(AuditEntry) if r.action == action]

    def decrypted(self, recording_id: str) -> Path:
        """The recording's WAV as `recordings decrypt` writes it (every segment authenticated,
        the SHA-256 matched)."""
        out = self.home / "out" / f"{recording_id}.wav"
        out.parent.mkdir(exist_ok=True)
        os.chown(out.parent, _uid(), -1)
        self.cli("recordings", "decrypt", recording_id, "-o", str(out), "--reason", "test")
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _uid() -> int:
    import daemon_account

    return daemon_account.UID


def wav_frames(path: Path) -> int:
    """The frames a WAV's header announces; asserts the header matches the file's size (a
    header left at 0 by a crashed PBX and not repaired would not)."""
    with wave.open(str(path)) as w:
        frames = w.getnframes()
        width, channels = w.getsampwidth(), w.getnchannels()
    assert 44 + frames * width * channels == path.stat().st_size, (path, frames)
    return frames


@contextlib.contextmanager
def daemon(
    section: str,
    spool: Path,
    prompts: Path,
    *,
    extra: str = "",
    url: str = "",
) -> Iterator[Daemon]:
    """`callconsent serve` as its account with ``section`` (its PBX's), the spool and prompts
    given; SQLite in its data dir unless ``url`` names another store (then already
    upgraded)."""
    with daemon_home() as home:
        config = home / "callconsent.toml"
        store = f'[database]\nurl = "{url}"\n' if url else ""
        write_config(
            config,
            f'[daemon]\ndata_dir = "{home / "data"}"\nnode = "pbx-faults"\nuser = "{USER}"\n'
            f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
            f"[metrics]\nport = {free_port()}\n{RECORDER}{store}{section}{extra}",
        )
        keys_init(config)
        d = Daemon(
            home, config, home / "serve.log", spool, url or f"sqlite:///{home}/data/callconsent.db"
        )
        try:
            with serving(config, d.log) as proc:
                d.proc = proc
                yield d
        finally:
            d.close()


# -- Asterisk ------------------------------------------------------------------------------


def asterisk_section(lab: Lab) -> str:
    return (
        f"[asterisk]\nenabled = true\nagi_port = {lab.agi_port}\n"
        f'ami_port = {lab.target.port}\nami_user = "{lab.ami_user}"\n'
        f'ami_secret = "{lab.ami_secret}"\n'
        "[policies.default]\ndigit_timeout_ms = 2000\n"
    )


@contextlib.contextmanager
def asterisk_dirs(lab: Lab) -> Iterator[tuple[Path, Path]]:
    """A spool and prompts beside the PBX's spool (2770: its account's and ours)."""
    spool = lab.target.spool / f"cct-{secrets.token_hex(4)}"
    prompts = Path(f"{spool}-prompts")
    for made in (spool, prompts):
        made.mkdir(mode=0o2770)
        made.chmod(0o2770)
    write_prompts(prompts)
    try:
        yield spool, prompts
    finally:
        for made in (spool, prompts):
            shutil.rmtree(made, ignore_errors=True)


class AsteriskPhones:
    """The test's own AMI connection (the lab's write=all user): places inbound calls that
    accept and then stay on hold, and hangs them up."""

    def __init__(self, lab: Lab) -> None:
        t = lab.target
        self.events: list[Message] = []
        self.ami = AmiClient(t.host, t.port, t.user, t.secret, on_event=self.events.append,
                             name="test-phones")  # fmt: skip
        self.tokens: list[str] = []

    async def start(self) -> None:
        assert await self.ami.start(10.0)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.hang_up(*self.tokens)
        await self.ami.stop()

    async def accepting(self, hold_s: int = 120) -> str:
        """A call that accepts and stays up ``hold_s`` (the caller speaks, then waits)."""
        token = secrets.token_hex(6)
        self.tokens.append(token)
        variables = [f"__CCTOKEN={token}", "CAMPAIGN=sales", "AGENT=", f"HOLD={hold_s}"]
        variables.append(f"TALK={hold_s}")
        await self.ami.action(
            "Originate",
            Channel="Local/cust@cct-in/n",
            ChannelId=f"cct-{token}",
            OtherChannelId=f"cct-{token}-2",
            Context="cct-phone",
            Exten="accept",
            Priority="1",
            Async="true",
            Timeout="30000",
            CallerID='"Customer" <+4915112345678>',
            Variable=variables,  # type: ignore[arg-type]
        )
        return token

    def decided(self, token: str) -> str | None:
        for m in self.events:
            if m.get("UserEvent") == "CCTest" and m.get("Token") == token:
                return str(m.get("Status") or "")
        return None

    def ended(self, token: str) -> bool:
        return any(m.get("UserEvent") == "CCTestEnd" and m.get("Token") == token
                   for m in self.events)  # fmt: skip

    async def hang_up(self, *tokens: str) -> None:
        """Hang up every channel of those calls still up."""
        ours = {f"cct-{t}" for t in tokens}
        gone = {str(m.get("Uniqueid")) for m in self.events if m.get("Event") == "Hangup"}
        for m in self.events:
            uid = str(m.get("Uniqueid"))
            if m.get("Event") == "Newchannel" and m.get("Linkedid") in ours and uid not in gone:
                with contextlib.suppress(AmiError, AmiUnavailable, TimeoutError):
                    await self.ami.action("Hangup", Channel=uid)


def asterisk_cli(command: str) -> str:
    done = subprocess.run([ASTERISK, "-rx", command], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def ami_sessions(user: str) -> list[str]:
    """The file descriptors (``manager show connected``) of ``user``'s AMI sessions (that
    listing cuts names to 15 characters)."""
    out = asterisk_cli("manager show connected")
    return [ln.split()[4] for ln in out.splitlines() if ln.split()[:1] == [user[:15]]]


def asterisk_up() -> bool:
    return "Asterisk" in asterisk_cli("core show version")


def pid_alive(path: Path) -> bool:
    try:
        os.kill(int(path.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def restart_asterisk(crash: bool = False) -> None:
    """`core stop now` (or, ``crash``, SIGKILL: no Hangup event, no WAV header written), then
    started again as its own account, as /opt/pbx/README.txt says."""
    pid = int(ASTERISK_PID.read_text().strip())
    if crash:
        os.kill(pid, signal.SIGKILL)
    else:
        asterisk_cli("core stop now")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "Asterisk stopped", 30)
    start_asterisk()


def start_asterisk() -> None:
    if not asterisk_up():
        subprocess.run([ASTERISK, "-U", "asterisk"], check=True, timeout=60)
    wait_for(asterisk_up, "Asterisk answering its CLI", 60)
    wait_for(lambda: _listening(5038), "the AMI port open", 60)


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- FreeSWITCH ----------------------------------------------------------------------------


def fs_cli(command: str, timeout: float = 30) -> str:
    done = subprocess.run([FS_CLI, "-x", command], capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def freeswitch_up() -> bool:
    return "is ready" in fs_cli("status", 10)


def restart_freeswitch() -> None:
    """`fs_cli -x shutdown`, then started again as its own account (README: ``-u freeswitch
    -nc -nonat`` from /, never ``-g``)."""
    pid = int(FREESWITCH_PID.read_text().strip())
    fs_cli("shutdown")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "FreeSWITCH stopped", 60)
    start_freeswitch()


def start_freeswitch() -> None:
    if not freeswitch_up():
        subprocess.run([FREESWITCH, "-u", "freeswitch", "-nc", "-nonat"], cwd="/", check=True,
                       timeout=60, capture_output=True)  # fmt: skip
    wait_for(freeswitch_up, "FreeSWITCH ready", 90)
