"""A simulated host for CLI tests: its own directory and config, the ``callconsent`` command run
as a real process (as the test's user: under root the commands switch accounts themselves)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import daemon_account

PASSPHRASE = "a long test passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    def __init__(self, name: str, extra: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"callconsent-{name}-"))
        self.dir.chmod(0o755)  # the daemon's account must reach it after the switch
        self.config = self.dir / "callconsent.toml"
        user = f'user = "{daemon_account.NAME}"\n' if daemon_account.ROOT else ""
        self.config.write_text(
            f'[daemon]\ndata_dir = "data"\nnode = "{name}"\n{user}\n'
            f"[metrics]\nport = {free_port()}\n{extra}"
        )
        self.config.chmod(0o644)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CALLCONSENT_KEY_PASSPHRASE": PASSPHRASE}
        return subprocess.run(
            [sys.executable, "-m", "callconsent", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=180, cwd=self.dir, env=env, input=stdin,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def remove(self) -> None:
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)
