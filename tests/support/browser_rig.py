"""A real `callconsent web` for browser tests and the web bench: a store made the way an
operator makes one (users by `callconsent users add`, the key store unlocked at start from a
passphrase file), calls with consent evidence and encrypted recordings, the server started as
a process on a free loopback port; and Debian's chromium driven by Playwright, with a
screenshot of every page visited.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make test``); Playwright is only
the driver: ``playwright install`` (a browser download) is never needed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import daemon_account
from recstore import PASSPHRASE, make_rig

import consent_ivr as c
from callconsent import cli
from callconsent import config as config_mod
from callconsent.app import App

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CALLCONSENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
CLI = [sys.executable, "-m", "callconsent"]
PASSWORD = "a long test password"
DOC_SHOTS_ENV = "CALLCONSENT_DOC_SCREENSHOTS"
PROMPT_SHA256 = hashlib.sha256(b"the consent prompt as played").hexdigest()


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or `make test` as root)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tone_wav(path: Path, seconds: float, rate: int = 8000) -> bytes:
    """A 16-bit mono WAV of a 400 Hz tone in bursts of changing loudness, like speech with
    pauses (so a waveform has a shape); the same bytes for the same length."""
    period, burst = rate // 400, rate // 4  # samples per cycle, per quarter second
    cycles = [
        b"".join(
            int(level * 2500 * (1 - abs(2 * i / period - 1) * 2)).to_bytes(2, "little", signed=True)
            for i in range(period)
        )
        * (burst // period)
        for level in range(8)
    ]
    n = int(seconds * rate)
    levels = [(k * 7 + k // 5 * 3) % 11 for k in range(n // burst + 1)]  # 8..10: a pause
    frames = b"".join(cycles[lv] if lv < 8 else cycles[0] for lv in levels)[: n * 2]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path.read_bytes()


@dataclass
class CallMade:
    call_id: str
    recording_id: str
    seconds: float
    wav_size: int


def add_call(
    app: App, *, agent: str | None, number: str, seconds: float, campaign: str = "sales"
) -> CallMade:
    """A call answered, consent granted with 1, one recording encrypted (the ledger's sink is
    the finalizer, so closing the recording encrypts it now)."""
    ledger = app.ledger
    ref = ledger.open_call(
        pbx="asterisk",
        pbx_call_id=uuid.uuid4().hex[:20],
        campaign=campaign,
        number=number,
        agent=agent,
    )
    machine = c.ConsentCall(c.Policy())
    machine.handle(c.CallAnswered())
    actions = machine.handle(c.DigitReceived("1"))
    evidence = next(a for a in actions if isinstance(a, c.LogConsent)).evidence
    ledger.log_consent(ref.id, evidence, prompt_digests={"consent": PROMPT_SHA256})
    rid = str(uuid.uuid4())
    path = app.spool.path_for(rid, "wav")
    ledger.recording_started(
        ref.id, rid, spool_path=str(path), fmt="wav", channels=1, sample_rate=8000
    )
    size = len(tone_wav(path, seconds))
    ledger.call_ended(ref.id)
    ledger.recording_closed(rid)
    return CallMade(ref.id, rid, seconds, size)


def run_cli(config: Path, *args: str) -> str:
    """`callconsent --config CONFIG ARGS...` in this process; its stdout."""
    out = io.StringIO()
    before = os.environ.get("CALLCONSENT_USER_PASSWORD")
    os.environ["CALLCONSENT_USER_PASSWORD"] = PASSWORD
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(["--config", str(config), *args])
    finally:
        if before is None:
            del os.environ["CALLCONSENT_USER_PASSWORD"]
        else:
            os.environ["CALLCONSENT_USER_PASSWORD"] = before
    assert code == 0, f"callconsent {' '.join(args)} exited {code}: {out.getvalue()}"
    return out.getvalue()


def write_config(
    root: Path,
    extra_web: str = "",
    *,
    state: Path | None = None,
    daemon_user: str | None = None,
    database_url: str | None = None,
) -> Path:
    """A config keeping everything under ``root`` (or the config and the data under
    ``state``), with the key store's passphrase in a 0600 file that ``[web] passphrase_file``
    names, in ``root``; the store is SQLite in the data directory unless ``database_url``."""
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    passphrase = secrets / "keys.passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    state = state or root
    config = state / "callconsent.toml"
    user = f'user = "{daemon_user}"\n' if daemon_user else ""
    database = f'[database]\nurl = "{database_url}"\n\n' if database_url else ""
    config.write_text(
        f'[daemon]\ndata_dir = "{state / "data"}"\nnode = "web-test"\n{user}\n'
        '[numbers]\ndefault_region = "DE"\n\n'
        f"{database}"
        f'[web]\npassphrase_file = "{passphrase}"\n{extra_web}'
    )
    config.chmod(0o644)
    return config


@contextlib.contextmanager
def daemon_state(root: Path) -> Iterator[Path]:
    """Where the config and the data live. Under root, `callconsent web` reads its passphrase
    file as root and then acts as the daemon's account, which cannot enter pytest's 0700 temp
    dirs: then a 0755 directory of its own (as tests/support/cli_host.py), removed after."""
    if not daemon_account.ROOT:
        yield root
        return
    state = Path(tempfile.mkdtemp(prefix="callconsent-web-site-"))
    state.chmod(0o755)
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


def give_to_the_daemon(data: Path) -> None:
    """Under root: what this process made in-process becomes the daemon's account's."""
    if not daemon_account.ROOT:
        return
    for path in [data, *data.rglob("*")]:
        os.chown(path, daemon_account.UID, daemon_account.GID, follow_symlinks=False)


@dataclass
class WebServer:
    """`callconsent web` running as its own process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text(errors="replace")


def start_web(config: Path, log: Path, timeout_s: float = 30) -> WebServer:
    """Start `python -m callconsent web` from this checkout; wait until /login answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CREDENTIALS_DIRECTORY", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "--config", str(config), "web", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = WebServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(server.url + "/login", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            output = server.stop()
            raise RuntimeError(f"callconsent web did not start:\n{output[-3000:]}")
        time.sleep(0.2)


@dataclass
class Site:
    """What the browser tests work on: the server, its config, users and calls."""

    server: WebServer
    config: Path
    calls: dict[str, CallMade]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


USERS = {"alice": "agent", "bob": "agent", "sam": "supervisor", "dora": "dpo", "lena": "agent"}


@contextlib.contextmanager
def site(
    root: Path, long_seconds: float = 600.0, database_url: str | None = None
) -> Iterator[Site]:
    """Users of every role, three calls (alice's with a long recording, bob's, one of no
    agent on a French number), API tokens for sam and dora, and `callconsent web` serving;
    on SQLite, or on the (empty) PostgreSQL database ``database_url``, which is upgraded
    first with `callconsent db upgrade`, as an operator does."""
    with daemon_state(root) as state:
        yield from _site(root, state, long_seconds, database_url)


def _site(root: Path, state: Path, long_seconds: float, database_url: str | None) -> Iterator[Site]:
    user = daemon_account.NAME if daemon_account.ROOT else None
    config = write_config(root, state=state, daemon_user=user, database_url=database_url)
    if database_url:
        run_cli(config, "db", "upgrade")
    app = App.open(config_mod.load(config))
    try:
        make_rig(app)  # the key store (PASSPHRASE), key epochs, the finalizer as sink
        calls = {
            "alice": add_call(app, agent="alice", number="+4915112345678", seconds=long_seconds),
            "bob": add_call(app, agent="bob", number="+4930901820", seconds=4.0),
            "nobody": add_call(
                app, agent=None, number="+33123456789", seconds=2.0, campaign="support"
            ),
        }
    finally:
        app.close()
    for name, role in USERS.items():
        run_cli(config, "users", "add", name, "--role", role)
    tokens = {
        name: run_cli(config, "users", "token", name).strip().splitlines()[-1]
        for name in ("sam", "dora")
    }
    give_to_the_daemon(state / "data")
    server = start_web(config, root / "web.log")
    if daemon_account.ROOT:  # started as root, it serves as the daemon's account
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        uid = next(int(x.split()[2]) for x in status.splitlines() if x.startswith("Uid:"))
        assert uid == daemon_account.UID, f"callconsent web serves as uid {uid}"
    try:
        yield Site(server, config, calls, tokens)
    finally:
        server.stop()


class Shots:
    """Screenshots of every page visited, numbered in order, under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []
        docs = os.environ.get(DOC_SHOTS_ENV)
        self.docs = Path(docs) if docs else None

    def take(self, page: Any, name: str, doc: str | None = None) -> Path:
        """A full-page screenshot; with ``doc`` and $CALLCONSENT_DOC_SCREENSHOTS set, also the
        viewport into that directory under that name (docs/img/ for docs/web.md)."""
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        if doc and self.docs:
            page.screenshot(path=str(self.docs / doc))
        return path

    @property
    def last(self) -> str:
        return str(self.taken[-1]) if self.taken else "(no screenshot yet)"
