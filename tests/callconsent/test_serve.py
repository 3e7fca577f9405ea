"""`callconsent serve` as a real process: starts, says where things are, stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest

ROOT = os.geteuid() == 0


def interpreter_readable_by_others() -> bool:
    return daemon_account.interpreter_readable()


#: every daemon a test started: one a failing test left running is killed after it
STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the daemon's account can reach even after it drops root."""
    path = Path(tempfile.mkdtemp(prefix="callconsent-serve-"))
    path.chmod(0o755)
    yield path
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(workdir: Path, extra: str = "") -> Path:
    path = workdir / "callconsent.toml"
    user = f'user = "{daemon_account.NAME}"\n' if ROOT else ""
    metrics = f"[metrics]\nport = {free_port()}\n"
    path.write_text(f'[daemon]\ndata_dir = "data"\n{user}{metrics}{extra}')
    path.chmod(0o644)
    return path


class Daemon:
    def __init__(self, cfg: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cfg.parent,
            env={**os.environ, **(env or {})},
        )
        STARTED.append(self.proc)

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} in daemon output:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 30) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.skipif(
    ROOT and not interpreter_readable_by_others(),
    reason="as root the daemon drops to its account, who cannot read this interpreter",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_logs_where_and_stops_cleanly(workdir: Path, sig: signal.Signals) -> None:
    daemon = Daemon(config(workdir))
    daemon.wait_for("event=ready")
    assert "event=starting" in daemon.output and "event=store" in daemon.output
    assert "malloc_arenas=2" in daemon.output  # callconsent/heap.py: limit_arenas
    assert f"data_dir={workdir / 'data'}" in daemon.output
    daemon.proc.send_signal(sig)
    assert daemon.finish() == 0, daemon.output
    assert f"signal={sig.name}" in daemon.output and "event=stopped" in daemon.output
    data = workdir / "data"
    assert (data / "callconsent.db").exists()
    assert (data / "keys").stat().st_mode & 0o777 == 0o700
    assert (data / "spool").stat().st_mode & 0o7777 == 0o2770
    if ROOT:
        assert "event=dropped_root" in daemon.output
        assert (data / "callconsent.db").stat().st_uid == daemon_account.UID


@pytest.mark.skipif(
    ROOT and not interpreter_readable_by_others(),
    reason="as root the daemon drops to its account, who cannot read this interpreter",
)
def test_sighup_reloads_a_valid_config_and_rejects_a_broken_one(workdir: Path) -> None:
    cfg = config(workdir)
    daemon = Daemon(cfg)
    daemon.wait_for("event=ready")
    cfg.write_text(cfg.read_text() + "[policies.sales]\nmode = 'never'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("event=reloaded")
    cfg.write_text(cfg.read_text() + "[asterisk]\nagi_port = 'x'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    line = daemon.wait_for("event=reload_rejected")
    assert "asterisk.agi_port" in line
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish() == 0


@pytest.mark.skipif(not ROOT, reason="only root has privileges to drop")
def test_serve_refuses_root_without_its_account(workdir: Path) -> None:
    cfg = workdir / "callconsent.toml"
    cfg.write_text('[daemon]\ndata_dir = "data"\nuser = "no-such-callconsent-user"\n')
    daemon = Daemon(cfg)
    assert daemon.finish() != 0
    assert "refusing to run as root" in daemon.output
    assert not (workdir / "data").exists()


def test_a_spool_others_can_read_is_refused(workdir: Path) -> None:
    cfg = config(workdir)
    spool = workdir / "data" / "spool"
    spool.mkdir(parents=True)
    spool.chmod(0o777)
    if ROOT:
        os.chown(workdir / "data", daemon_account.UID, -1)
        if not interpreter_readable_by_others():
            pytest.skip("the daemon's account cannot read this interpreter")
    daemon = Daemon(cfg)
    assert daemon.finish() != 0
    assert "other users can reach recordings" in daemon.output


@pytest.mark.skipif(
    ROOT and not interpreter_readable_by_others(),
    reason="as root the daemon drops to its account, who cannot read this interpreter",
)
def test_under_systemd_supervision_it_reports_ready_pings_and_stops(workdir: Path) -> None:
    """What systemd sees of a Type=notify unit with WatchdogSec: READY=1, WATCHDOG=1 pings,
    STOPPING=1 on SIGTERM, exit status 0; and /metrics answers on 127.0.0.1 meanwhile."""
    notify_path = workdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    notify_path.chmod(0o777)  # the daemon may have dropped to another account
    sock.settimeout(30)
    cfg = config(workdir)
    port = int(cfg.read_text().split("port = ")[1].split()[0])
    daemon = Daemon(cfg, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    try:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        while messages.count("WATCHDOG=1") < 3:
            messages.append(sock.recv(4096).decode())
        assert "STATUS=serving:" in next(m for m in messages if m.startswith("READY=1"))
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        assert 'callconsent_recordings{state="encrypted"} 0.0' in body
        assert "callconsent_consent_decisions" in body
        daemon.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
        assert daemon.finish() == 0, daemon.output
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        sock.close()
