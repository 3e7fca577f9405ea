"""`callconsent serve` installed as deploy/README.md says, for the realpbx tests (issue 14,
point 7): a process of its own from this checkout's interpreter, started as the daemon's
account (as systemd's ``User=callconsent`` starts it), its state made by `keys init` started as
root (which acts as that account), in a 0755 directory that account can reach."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest
from cli_host import PASSPHRASE

USER = daemon_account.NAME

#: the marks of a realpbx test that runs the daemon this way
MARKS = [
    pytest.mark.realpbx,
    pytest.mark.slow,
    pytest.mark.skipif(not daemon_account.ROOT, reason="installs the daemon's account as root"),
    pytest.mark.skipif(USER != "callconsent", reason="needs the callconsent account"),
    pytest.mark.skipif(
        not daemon_account.interpreter_readable(),
        reason="the daemon's account cannot read this interpreter",
    ),
]


@contextlib.contextmanager
def daemon_home() -> Iterator[Path]:
    """Where the config and the data dir go: reachable by the daemon's account; removed after."""
    home = Path(tempfile.mkdtemp(prefix="cct-daemon-", dir="/var/tmp"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


def write_config(path: Path, text: str) -> None:
    """As deploy/: root:<the account's group> 0640."""
    path.write_text(text)
    path.chmod(0o640)
    os.chown(path, 0, daemon_account.GID)


def keys_init(config: Path) -> None:
    """`callconsent keys init` started as root, as docs/keys.md shows it."""
    env = {**os.environ, "CALLCONSENT_KEY_PASSPHRASE": PASSPHRASE}
    done = subprocess.run(
        [sys.executable, "-m", "callconsent", "--config", str(config), "keys", "init"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def serving(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`callconsent serve` as the daemon's account until the block ends (SIGTERM)."""
    groups = os.getgrouplist(USER, daemon_account.GID)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "USER": USER,
           "LOGNAME": USER}  # fmt: skip
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(config), "serve"],
            user=daemon_account.UID, group=daemon_account.GID, extra_groups=groups,
            cwd="/", env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "event=ready" not in log.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        assert f"Uid:\t{daemon_account.UID}\t" in status, status
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def recordings(db: Path) -> list[tuple[str, str]]:
    """(state, ciphertext path) of every recording, read beside the running daemon."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        return list(c.execute("select state, coalesce(ciphertext_path, '') from recordings"))


def not_the_accounts(root: Path) -> list[str]:
    """Every path below ``root`` the daemon's account does not own."""
    return [
        f"{p} (uid {p.lstat().st_uid})"
        for p in [root, *root.rglob("*")]
        if p.lstat().st_uid != daemon_account.UID
    ]


def quiet(log: Path) -> None:
    """No traceback, no error-level line in the daemon's log."""
    text = log.read_text()
    assert "Traceback" not in text and " error " not in text, text
