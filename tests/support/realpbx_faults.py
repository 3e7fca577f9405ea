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
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import daemon_account
import diskfull
import sqlalchemy as sa
from asterisk_real import Lab
from asterisk_real_harness import write_prompts
from cli_host import PASSPHRASE, free_port
from daemon_cli import run as cli
from daemon_process import USER, daemon_home, keys_init, serving, write_config
from fake_pbx import make_prompts
from freeswitch_real import CALLER, Real, install
from panoramisk.message import Message
from pbx_account import hand_over, pbx_dir, require_unprivileged
from recstore import files_in

from agi.ami import AmiClient, AmiError, AmiUnavailable
from callconsent import config as config_mod
from recorder.store.models import AuditEntry, Call, Recording
from recorder.vault.directory import MARKER

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

    def details(self, action: str) -> dict[str, dict]:  # type: ignore[type-arg]
        """Each subject's audit details for ``action`` (the last row's)."""
        return {r.subject_id: json.loads(r.details) for r in self.rows(AuditEntry)
                if r.action == action}  # fmt: skip

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

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        """The daemon's log on the test's output if the block fails (pytest shows it)."""
        try:
            yield
        except BaseException:
            print(self.log.read_text()[-20000:])
            raise

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _uid() -> int:
    return daemon_account.UID


def wav_frames(path: Path) -> int:
    """The frames a WAV's header announces; asserts the header matches the file (RIFF size and
    the data chunk's size both what the file holds: a header left at 0 by a crashed PBX and
    not repaired would not). Walks the chunks: FreeSWITCH's files carry more than ``fmt ``."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE", raw[:12]
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8, (path, "RIFF size")
    at = 12
    while at + 8 <= len(raw):
        name, size = raw[at : at + 4], struct.unpack_from("<I", raw, at + 4)[0]
        if name == b"data":
            assert at + 8 + size == len(raw), (path, "data size", size, len(raw) - at - 8)
            break
        at += 8 + size + (size & 1)
    else:
        raise AssertionError(f"{path}: no data chunk")
    with wave.open(str(path)) as w:
        return w.getnframes()


@contextlib.contextmanager
def daemon(
    section: str,
    spool: Path,
    prompts: Path,
    *,
    extra: str = "",
    url: str = "",
    before: Callable[[Path], None] | None = None,
    recorder: str = "",
) -> Iterator[Daemon]:
    """`callconsent serve` as its account with ``section`` (its PBX's), the spool and prompts
    given; SQLite in its data dir unless ``url`` names another store (then already
    upgraded); ``before`` is given the config file before the daemon starts; ``recorder``:
    more ``[recorder]`` keys."""
    with daemon_home() as home:
        config = home / "callconsent.toml"
        store = f'[database]\nurl = "{url}"\n' if url else ""
        write_config(
            config,
            f'[daemon]\ndata_dir = "{home / "data"}"\nnode = "pbx-faults"\nuser = "{USER}"\n'
            f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
            f"[metrics]\nport = {free_port()}\n{RECORDER}{recorder}{store}{section}{extra}",
        )
        keys_init(config)
        if before is not None:
            before(config)
        d = Daemon(
            home, config, home / "serve.log", spool, url or f"sqlite:///{home}/data/callconsent.db"
        )
        try:
            with serving(config, d.log) as proc:
                d.proc = proc
                yield d
        finally:
            d.close()


def check_evidence(d: Daemon, calls: int, errors: set[str], audio: bool = True) -> None:
    """Every call ended, one encrypted recording each, none left as plaintext, each decrypting
    to a WAV whose header matches its audio; the chain verifies; no traceback, no error line
    but ``errors`` (the fault's own). ``audio``: each holds some (a PBX killed with SIGKILL
    may not have written its buffered audio out yet: then only the header is checked)."""
    recs = d.rows(Recording)
    ended = d.rows(Call)
    assert len(ended) == calls and all(c.ended_at is not None for c in ended), ended
    assert sorted(r.call_id for r in recs) == sorted(c.id for c in ended)  # one each
    assert [r.state for r in recs] == ["encrypted"] * calls
    assert list(d.spool.rglob("*.wav")) == []  # no plaintext left
    for r in recs:
        frames = wav_frames(d.decrypted(r.id))
        assert frames > 0 or not audio, (r.id, frames)  # audio, in a header that matches it
    verified = d.cli("audit", "verify")
    assert "chain intact" in verified.stdout, verified.stdout
    assert d.cli("recordings", "verify", "--all").returncode == 0
    text = d.log.read_text()
    assert "Traceback" not in text, text[max(0, text.find("Traceback") - 2000) :][:6000]
    assert {e for lvl, e in d.said() if lvl in ("error", "critical")} == errors, text


# -- Asterisk ------------------------------------------------------------------------------


def asterisk_section(lab: Lab) -> str:
    return (
        f"[asterisk]\nenabled = true\nagi_port = {lab.agi_port}\n"
        f'ami_port = {lab.target.port}\nami_user = "{lab.ami_user}"\n'
        f'ami_secret = "{lab.ami_secret}"\n'
        "[policies.default]\ndigit_timeout_ms = 2000\n"
    )


@contextlib.contextmanager
def asterisk_dirs(lab: Lab, spool_size: str = "") -> Iterator[tuple[Path, Path]]:
    """A spool and prompts beside the PBX's spool (2770: its account's and ours); the spool a
    tmpfs of ``spool_size`` if given (to fill up)."""
    spool = lab.target.spool / f"cct-{secrets.token_hex(4)}"
    prompts = Path(f"{spool}-prompts")
    for made in (spool, prompts):
        made.mkdir(mode=0o2770)
        made.chmod(0o2770)
    write_prompts(prompts)
    try:
        with contextlib.ExitStack() as stack:
            if spool_size:
                stack.enter_context(diskfull.tmpfs(spool, spool_size, mode="2770"))
                os.chown(spool, 0, daemon_account.GID)  # as the directory it covers
            yield spool, prompts
    finally:
        for made in (spool, prompts):
            shutil.rmtree(made, ignore_errors=True)


async def originate_accepting(ami: AmiClient, token: str, *, hold_s: int, talk_s: int) -> None:
    """Originate a customer (``Local/cust@cct-in``) whose phone (``cct-phone``, ``accept``)
    presses 1, speaks ``talk_s`` and stays up ``hold_s``; its channels are ``cct-<token>``."""
    await ami.action(
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
        Variable=[
            f"__CCTOKEN={token}",
            "CAMPAIGN=sales",
            "AGENT=",
            f"HOLD={hold_s}",
            f"TALK={talk_s}",
        ],  # type: ignore[arg-type]
    )


class AsteriskPhones:
    """The test's own AMI connection (the lab's write=all user): places inbound calls that
    accept and then stay on hold, and hangs them up."""

    def __init__(self, lab: Lab) -> None:
        t = lab.target
        self.events: list[Message] = []
        self.ami = AmiClient(t.host, t.port, t.user, t.secret, on_event=self.events.append,
                             events="on", name="test-phones")  # fmt: skip
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
        await originate_accepting(self.ami, token, hold_s=hold_s, talk_s=hold_s)
        return token

    def decided(self, token: str) -> str | None:
        """The call's CONSENT_STATUS once the dialplan is past our subroutine ('' if none)."""
        found = self.report(token)
        return None if found is None else str(found.get("Status") or "")

    def report(self, token: str) -> Message | None:
        """The call's CCTest event (its status, recording id, MixMonitor id)."""
        found = [m for m in self.events if m.get("UserEvent") == "CCTest"]
        return next((m for m in found if m.get("Token") == token), None)

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


def restart_asterisk(crash: bool = False) -> None:
    """`core stop now` (or, ``crash``, SIGKILL: no Hangup event, no WAV header written), then
    started again as its own account, as /opt/pbx/README.txt says."""
    _restart(ASTERISK_PID, lambda: asterisk_cli("core stop now"), crash, "Asterisk", 30)
    start_asterisk()


def _restart(
    pidfile: Path, stop: Callable[[], object], crash: bool, what: str, seconds: float
) -> None:
    """Stop the PBX whose pid ``pidfile`` holds (``stop``, or SIGKILL if ``crash``) and wait
    until its process is gone."""
    pid = int(pidfile.read_text().strip())
    if crash:
        os.kill(pid, signal.SIGKILL)
    else:
        stop()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"{what} stopped", seconds)


def start_asterisk() -> None:
    if not asterisk_up():
        subprocess.run([ASTERISK, "-U", "asterisk"], check=True, timeout=60)
    wait_for(asterisk_up, "Asterisk answering its CLI", 60)
    wait_for(lambda: _listening(5038), "the AMI port open", 60)


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- FreeSWITCH ----------------------------------------------------------------------------


FS_ESL_USER = "callconsent@127.0.0.1"


def freeswitch_section(real: Real) -> str:
    return (
        f'[freeswitch]\nenabled = true\nesl_user = "{FS_ESL_USER}"\n'
        f'esl_password = "rt-{secrets.token_hex(8)}"\nesl_port = {real[1]}\n'
        "[policies.default]\ndigit_timeout_ms = 2500\n"
    )


@contextlib.contextmanager
def freeswitch_dirs(real: Real, spool_size: str = "") -> Iterator[tuple[Path, Path]]:
    """A spool and prompts FreeSWITCH's own account can reach (2770, its shared group); the
    spool a tmpfs of ``spool_size`` if given (to fill up)."""
    account = require_unprivileged(real[1], "freeswitch")
    with (
        pbx_dir(account, "fs-spool") as spool,
        pbx_dir(account, "fs-prompts") as prompts,
        contextlib.ExitStack() as stack,
    ):
        if spool_size:
            stack.enter_context(diskfull.tmpfs(spool, spool_size, mode="2770"))
            os.chown(spool, -1, account.shared_gid)  # as the directory it covers
        make_prompts(prompts, ("en",))
        hand_over(prompts, account)
        yield spool, prompts


def freeswitch_install(real: Real) -> Callable[[Path], None]:
    """What the daemon's FreeSWITCH needs before it starts: our dialplan and ESL user in the
    PBX's config, loaded (``reloadxml``)."""

    def before(config: Path) -> None:
        cfg = config_mod.load(config)
        install(real[3], cfg, config.parent / "rendered")
        assert "+OK" in fs_cli("reloadxml"), "reloadxml failed"

    return before


def esl_user_file(real: Real) -> Path:
    return real[3] / "callconsent" / "directory" / "callconsent.xml"


class FreeswitchPhones:
    """Loopback calls through the shipped inbound dialplan (caller presses 1, then the agent
    leg stays up ``hold`` seconds), placed and hung up with fs_cli."""

    def __init__(self) -> None:
        self.legs: list[str] = []

    def accepting(self, hold_s: int = 120) -> str:
        phone = f"'m:^:sleep:1200^send_dtmf:1^sleep:{hold_s * 1000}^hangup'"
        out = fs_cli(
            f"originate {CALLER}loopback/cc_in_default_hold/callconsent_test {phone} inline"
        )
        assert out.startswith("+OK "), out
        leg = out.split()[1]
        self.legs.append(leg)
        return leg

    def hang_up(self, *legs: str) -> None:
        for leg in legs:
            fs_cli(f"uuid_kill {leg}")

    def alive(self, leg: str) -> bool:
        return fs_cli(f"uuid_exists {leg}").strip() == "true"

    def stop(self) -> None:
        self.hang_up(*[leg for leg in self.legs if self.alive(leg)])


def esl_ports(pid: int) -> list[int]:
    """The local ports of ``pid``'s TCP connections to the event socket (8021)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "dport", "= :8021"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [int(ln.split()[2].rsplit(":", 1)[1]) for ln in out.splitlines() if f"pid={pid}," in ln]


def cut(port: int) -> None:
    """Kill one TCP connection to the event socket from here (``ss -K``): both ends see it
    close at once, as when FreeSWITCH drops it."""
    subprocess.run(["ss", "-K", "-tn", "dport", "= :8021", "sport", f"= :{port}"],
                   check=True, capture_output=True)  # fmt: skip


def fs_cli(command: str, timeout: float = 30) -> str:
    done = subprocess.run([FS_CLI, "-x", command], capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def freeswitch_up() -> bool:
    return "is ready" in fs_cli("status", 10)


def restart_freeswitch(crash: bool = False) -> None:
    """`fs_cli -x shutdown` (or, ``crash``, SIGKILL), then started again as its own account
    (README: ``-u freeswitch -nc -nonat`` from /, never ``-g``)."""
    _restart(FREESWITCH_PID, lambda: fs_cli("shutdown"), crash, "FreeSWITCH", 60)
    start_freeswitch()


def start_freeswitch() -> None:
    if not freeswitch_up():
        subprocess.run([FREESWITCH, "-u", "freeswitch", "-nc", "-nonat"], cwd="/", check=True,
                       timeout=60, capture_output=True)  # fmt: skip
    wait_for(freeswitch_up, "FreeSWITCH ready", 90)


@contextlib.contextmanager
def small_vault() -> Iterator[Path]:
    """A 1 MiB tmpfs the daemon's account owns, for ``[recorder] vault_dir``."""
    vault = Path(tempfile.mkdtemp(prefix="cct-vault-", dir="/var/tmp"))
    vault.chmod(0o755)
    mount = vault / "vault"
    try:
        with diskfull.tmpfs(mount, "1m", mode="0700"):
            os.chown(mount, daemon_account.UID, daemon_account.GID)
            yield mount
    finally:
        shutil.rmtree(vault, ignore_errors=True)


async def vault_full_while_two_calls_end(
    d: Daemon, vault: Path, two_calls_end: Callable[[], Awaitable[None]]
) -> None:
    """The vault is full when two recorded calls end (``two_calls_end``): nothing half-written
    is left in it, both stay ``closed`` with their WAVs in the spool, ``finalize_failed`` said
    once; space back: both encrypted, each decrypting to the very WAV the PBX wrote."""
    filler = await asyncio.to_thread(diskfull.fill, vault, "filler")
    await two_calls_end()
    await until(lambda: d.lines("finalize_failed"), "finalize_failed said", 60)
    await asyncio.sleep(3.0)  # a few reconciliation passes on a full disk
    assert d.states() == ["closed"] * 2, d.states()
    left = await asyncio.to_thread(files_in, vault)  # the vault and its .writing/
    assert left == [MARKER, "filler"], left  # nothing half-written
    written = await asyncio.to_thread(plaintexts, d)
    filler.unlink()
    await until(lambda: d.states() == ["encrypted"] * 2, "both encrypted", 60)
    for rid, wav in written.items():
        assert d.decrypted(rid).read_bytes() == wav, rid  # the very WAV the PBX wrote
    said = d.lines("finalize_failed")
    assert len(said) == 1 and "disk full writing to the vault" in said[0], said


def plaintexts(d: Daemon) -> dict[str, bytes]:
    """Each recording's WAV as the PBX left it in the spool."""
    return {r.id: Path(r.spool_path).read_bytes() for r in d.rows(Recording)}


# -- the daemon killed with calls recording (both PBXs) -------------------------------------


async def kill_daemon(d: Daemon) -> None:
    """SIGKILL ``callconsent serve`` and wait until it is gone."""
    assert d.proc is not None
    d.proc.kill()
    await asyncio.to_thread(d.proc.wait, 30)


async def serve_again_and_end_the_third(
    d: Daemon, end_third: Callable[[], Awaitable[None]]
) -> None:
    """After a kill in which two of three recorded calls ended unheard: start the daemon
    again; it finalises the two; then the third ends as usual and is finalised too. The
    killed daemon's log holds no traceback."""
    first_log, d.log = d.log, d.home / "serve-again.log"
    again = serving(d.config, d.log)
    d.proc = await asyncio.to_thread(again.__enter__)
    try:
        await until(
            lambda: d.states() == ["encrypted", "encrypted", "recording"],
            "the two that ended while it was down finalised",
            60,
        )
        await end_third()
        await until(lambda: d.states() == ["encrypted"] * 3, "the third finalised", 60)
    finally:
        await asyncio.to_thread(again.__exit__, None, None, None)
    assert "Traceback" not in first_log.read_text()
