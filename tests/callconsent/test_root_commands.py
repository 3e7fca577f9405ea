"""Commands that create or change the daemon's state, started as root (issue 14, point 4):
each acts as the daemon's account, so `serve` afterwards finds everything its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest
from cli_host import Host
from recstore import write_wav
from sqlalchemy import create_engine, text

pytestmark = [
    pytest.mark.skipif(not daemon_account.ROOT, reason="about commands started as root"),
    pytest.mark.skipif(
        not daemon_account.interpreter_readable(),
        reason="the daemon's account cannot read this interpreter",
    ),
]


ACCOUNT_UID = daemon_account.UID


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host("pbx-root")
    yield h
    h.remove()


def not_the_accounts(root: Path) -> list[str]:
    """Every path below ``root`` that the daemon's account does not own."""
    paths = [root, *root.rglob("*")]
    return [
        f"{p} (uid {p.lstat().st_uid})" for p in paths if p.lstat().st_uid != daemon_account.UID
    ]


def audit_os_users(host: Host) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{host.data / 'callconsent.db'}")
    with engine.connect() as c:
        rows = c.execute(text("select action, os_user from audit_log order by seq")).all()
    engine.dispose()
    return {action: user for action, user in rows}


def test_each_state_command_started_as_root_acts_as_the_daemons_account(host: Host) -> None:
    assert "key store created" in host.ok("keys", "init")
    assert not_the_accounts(host.data) == []  # keys, database, spool: the account's
    host.ok("keys", "rotate")
    host.ok("db", "upgrade")
    source = host.dir / "prompt-source.wav"
    write_wav(source, 1.0)
    source.chmod(0o644)
    host.ok("prompts", "build", "--from", str(source), "--prompt", "consent", "--language", "en")
    assert (host.data / "prompts" / "en" / "consent.wav").stat().st_uid == daemon_account.UID
    wav = host.dir / "call.wav"
    write_wav(wav, 2.0)
    wav.chmod(0o644)
    imported = json.loads(host.ok("recordings", "import", str(wav), "--legal-basis", "consent",
                                  "--json"))  # fmt: skip
    assert len(imported) == 1  # the finalizer refuses root: the import ran as the account
    exported = host.dir / "public.json"
    host.ok("keys", "export-public", "--reason", "test", "-o", str(exported))
    assert "imported 0 of" in host.ok("keys", "import-public", str(exported))
    assert not_the_accounts(host.data) == []
    users = audit_os_users(host)
    # the audit log still names who started them
    assert users["key_epoch.created"] == f"{daemon_account.NAME} (for root)"
    assert users["recording.encrypted"] == f"{daemon_account.NAME} (for root)"

    daemon = subprocess.Popen(
        [sys.executable, "-m", "callconsent", "--config", str(host.config), "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=host.dir,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        seen = []
        for line in daemon.stdout:
            seen.append(line)
            if "event=ready" in line or "Error" in line:
                break
        assert "event=ready" in seen[-1], "".join(seen)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_a_root_only_key_file_is_read_before_the_switch(host: Host) -> None:
    key = host.dir / "root-only.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)  # root's: the daemon's account could not open it
    done = host("keys", "init", "--key-file", str(key))
    assert done.returncode == 0, done.stderr
    assert host("keys", "rotate", "--key-file", str(key)).returncode == 0


def test_a_config_the_account_cannot_read_is_named(host: Host) -> None:
    host.config.chmod(0o600)
    done = host("keys", "init")
    assert done.returncode == 1
    assert f"the account {daemon_account.NAME} cannot read {host.config}" in done.stderr
    assert not host.data.exists() or not_the_accounts(host.data) == []
