"""Commands that create or change the daemon's state, started as root (issue 14, point 4):
each acts as the daemon's account, so `serve` afterwards finds everything its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest
from cli_host import PASSPHRASE, Host, free_port
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


def root_only(path: Path, text: str) -> Path:
    """A secret in a 0700 directory of root's: the daemon's account could not read it."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    return int(line.split()[2])  # the effective uid


def api(url: str, token: str, method: str = "GET", body: dict | None = None) -> dict:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def start_web(host: Host, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(host.config), "web",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=host.dir, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/login", timeout=2) as r:
                if r.status == 200:
                    return server, url
        except (urllib.error.URLError, ConnectionError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"callconsent web did not start:\n{log.read_text()}")
        time.sleep(0.2)


def test_the_web_and_people_commands_started_as_root_act_as_the_daemons_account() -> None:
    host = Host("web-root", '[web]\npassphrase_file = "secret/keys.passphrase"\n')
    try:
        root_only(host.dir / "secret" / "keys.passphrase", PASSPHRASE + "\n")
        host.ok("keys", "init")
        wav = host.dir / "call.wav"
        write_wav(wav, 2.0)
        wav.chmod(0o644)
        [imported] = json.loads(host.ok("recordings", "import", str(wav), "--legal-basis",
                                        "consent", "--json"))  # fmt: skip
        password = root_only(host.dir / "secret" / "password", "a long admin password\n")
        host.ok("users", "add", "admin", "--role", "admin", "--password-file", str(password))
        host.ok("users", "passwd", "admin", "--password-file", str(password))
        host.ok("users", "add", "sam", "--role", "agent", "--no-password")
        host.ok("users", "role", "sam", "supervisor")
        host.ok("users", "disable", "sam")
        host.ok("users", "enable", "sam")
        token = host.ok("users", "token", "admin").strip().splitlines()[-1]
        assert "admin" in host.ok("users", "list")
        assert not_the_accounts(host.data) == []

        # `web` reads the root-only passphrase as root, then serves as the daemon's account
        server, url = start_web(host, host.dir / "web.log")
        try:
            assert uid_of(server.pid) == daemon_account.UID
            link = api(f"{url}/api/v1/recordings/{imported['recording_id']}/shares", token,
                       "POST", {"hours": 2})  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=20)
        log = (host.dir / "web.log").read_text()
        assert "event=web_starting" in log and "audio=true" in log.lower(), log
        assert "web_without_keys" not in log, log

        assert "revoked" in host.ok("links", "revoke", str(link["id"]))
        host.ok("retention", "run", "--dry-run")
        host.ok("retention", "run")
        # a year on, forced (audited): the recording goes and its epoch's key is destroyed
        host.ok("retention", "run", "--as-of", "2099-01-01", "--force-as-of", "--actor",
                "admin", "--reason", "root-switch test")  # fmt: skip
        assert not_the_accounts(host.data) == []
        users = audit_os_users(host)
        for action in ("user.added", "user.password_changed", "token.created", "share.created",
                       "share.revoked", "retention.forced_as_of", "recording.purged",
                       "key_epoch.destroyed"):  # fmt: skip
            assert users[action] == f"{daemon_account.NAME} (for root)", (action, users)
    finally:
        host.remove()
