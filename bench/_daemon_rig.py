"""`callconsent serve` in its own process for the whole-daemon benchmark: a work directory the
daemon's account can reach, a key store, the English prompts built as a new user would, a
config pointing the adapter at the load generator, and (``--postgres``) a throwaway
PostgreSQL server like the one the test suite starts (``tests/support/pg.py``).

The daemon is started with ``CALLCONSENT_STORE_STATS=1``: it then counts its store
transactions (``callconsent_store_transactions_total`` on its metrics port).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, free_port, rss_mib

sys.path.insert(0, str(ROOT / "tests" / "support"))
import daemon_cli

PASSPHRASE = "bench passphrase, not for production"
AMI_USER, AMI_SECRET = "callconsent", "bench-secret"
ESL_PASSWORD = "ClueCon"


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    workdir: Path
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def transactions(self) -> dict[str, int]:
        """Store transactions so far, by end (commit: writes, rollback: reads); the daemon
        counts them when started with CALLCONSENT_STORE_STATS=1."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        found = {"commit": 0, "rollback": 0}
        with urllib.request.urlopen(url, timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("callconsent_store_transactions_total{"):
                    end = line.split('end="', 1)[1].split('"', 1)[0]
                    found[end] = int(float(line.split()[-1]))
        return found

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_events(self, event: str, since: int) -> list[str]:
        """The daemon's log lines of ``event`` written after byte ``since`` (``log_size``)."""
        with self.log_path.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if f" event={event} " in f"{line} "]

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cli(cfg: Path, *args: str) -> None:
    done = daemon_cli.run("bench", cfg, PASSPHRASE, *args, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"callconsent {' '.join(args)} failed: {done.stderr.strip()[-400:]}")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    base = daemon_cli.workdir("bench")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh database on a private PostgreSQL server (``fsync=off``, as the tests run it)."""
    import pg

    with pg.server() as admin, pg.fresh_database(admin) as url:
        yield url


def prepare(base: Path, section: str, database_url: str | None = None) -> Path:
    """Config, keys and prompts in ``base``; ``section`` is the PBX part of the config."""
    cfg = base / "callconsent.toml"
    db = f'[database]\nurl = "{database_url}"\n\n' if database_url else ""
    cfg.write_text(
        '[daemon]\ndata_dir = "var"\nnode = "bench"\n\n'
        f"{db}[metrics]\nport = {free_port()}\n\n{section}"
    )
    cfg.chmod(0o644)
    if database_url:  # PostgreSQL: the schema is upgraded by hand, once, before anything
        _cli(cfg, "db", "upgrade")
    _cli(cfg, "keys", "init")
    _cli(cfg, "prompts", "build", "--language", "en")
    return cfg


def asterisk_section(agi_port: int, ami_port: int) -> str:
    return (
        f"[asterisk]\nenabled = true\nagi_port = {agi_port}\nami_port = {ami_port}\n"
        f'ami_user = "{AMI_USER}"\nami_secret = "{AMI_SECRET}"\n'
        "max_sessions = 100000\n"
    )


def freeswitch_section(outbound_port: int, esl_port: int) -> str:
    return (
        f"[freeswitch]\nenabled = true\noutbound_port = {outbound_port}\nesl_port = {esl_port}\n"
        f'esl_password = "{ESL_PASSWORD}"\n'
    )


def start(cfg: Path, wait_s: float = 60.0) -> Daemon:
    import tomllib

    metrics_port = tomllib.loads(cfg.read_text())["metrics"]["port"]
    log_path = cfg.parent / "daemon.log"
    out = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cfg.parent,
        env={**os.environ, "CALLCONSENT_STORE_STATS": "1"},
    )
    daemon = Daemon(proc, cfg.parent, metrics_port, log_path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if b"event=ready" in log_path.read_bytes():
            return daemon
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"the daemon did not start:\n{daemon.log_tail()}")
