"""`callconsent serve` as a real process: starts, says where things are, stops cleanly."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0


def interpreter_readable_by_others() -> bool:
    exe = os.path.realpath(sys.executable)
    return not exe.startswith("/root/")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the daemon's account can reach even after it drops root."""
    path = Path(tempfile.mkdtemp(prefix="callconsent-serve-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def config(workdir: Path, extra: str = "") -> Path:
    path = workdir / "callconsent.toml"
    user = 'user = "nobody"\n' if ROOT else ""
    path.write_text(f'[daemon]\ndata_dir = "data"\n{user}{extra}')
    path.chmod(0o644)
    return path


class Daemon:
    def __init__(self, cfg: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cfg.parent,
        )

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
    reason="as root the daemon drops to 'nobody', who cannot read this interpreter",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_logs_where_and_stops_cleanly(workdir: Path, sig: signal.Signals) -> None:
    daemon = Daemon(config(workdir))
    daemon.wait_for("event=ready")
    assert "event=starting" in daemon.output and "event=store" in daemon.output
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
        assert (data / "callconsent.db").stat().st_uid == pwd.getpwnam("nobody").pw_uid


@pytest.mark.skipif(
    ROOT and not interpreter_readable_by_others(),
    reason="as root the daemon drops to 'nobody', who cannot read this interpreter",
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
        os.chown(workdir / "data", pwd.getpwnam("nobody").pw_uid, -1)
        if not interpreter_readable_by_others():
            pytest.skip("the daemon's account cannot read this interpreter")
    daemon = Daemon(cfg)
    assert daemon.finish() != 0
    assert "other users can reach recordings" in daemon.output
