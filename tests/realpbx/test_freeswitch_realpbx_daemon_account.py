"""The daemon installed as deploy/README.md says, against the real FreeSWITCH (issue 14, point
7): `callconsent serve` runs as its own account (``callconsent``, as the systemd unit's
``User=``), in its own process from this checkout's interpreter, not inside the test; the
state is made by `keys init` started as root (which acts as that account); FreeSWITCH, as its
own account, writes the recording into the spool both accounts share (2770, group
``callconsent``); the daemon encrypts it. Every file of the daemon's state is its account's."""

from __future__ import annotations

import asyncio
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
from cli_host import PASSPHRASE, free_port
from fake_pbx import make_prompts
from freeswitch_real import CONFIG, Driver, Real, endpoint, install, until
from pbx_account import hand_over, pbx_dir, require_unprivileged

from callconsent import config as config_mod
from esl_listener.connection import open_inbound

pytestmark = [
    pytest.mark.realpbx,
    pytest.mark.slow,
    pytest.mark.skipif(not daemon_account.ROOT, reason="installs the daemon's account as root"),
    pytest.mark.skipif(
        daemon_account.NAME != "callconsent", reason="needs the callconsent account"
    ),
    pytest.mark.skipif(
        not daemon_account.interpreter_readable(),
        reason="the daemon's account cannot read this interpreter",
    ),
]

USER = daemon_account.NAME
PHONE = "'m:^:sleep:1200^send_dtmf:1^playback:tone_stream://L=1;%(1000,0,440)^sleep:300^hangup'"


@pytest.fixture(scope="module")
def real() -> Iterator[Real]:
    yield endpoint()


async def reload_xml(real: Real) -> None:
    admin = await open_inbound(real[0], real[1], real[2])
    try:
        assert (await admin.api("reloadxml")).ok
    finally:
        await admin.close()


def not_the_accounts(root: Path) -> list[str]:
    return [
        f"{p} (uid {p.lstat().st_uid})"
        for p in [root, *root.rglob("*")]
        if p.lstat().st_uid != daemon_account.UID
    ]


def recordings(db: Path) -> list[tuple[str, str]]:
    """(state, vault path) of every recording, read as root beside the running daemon."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
        return list(c.execute("select state, coalesce(ciphertext_path, '') from recordings"))


def serve_as_the_account(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`callconsent serve` as the daemon's account, as systemd's User=callconsent starts it."""
    groups = os.getgrouplist(daemon_account.NAME, daemon_account.GID)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "USER": daemon_account.NAME,
        "LOGNAME": daemon_account.NAME,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(config), "serve"],
            user=daemon_account.UID, group=daemon_account.GID, extra_groups=groups,
            cwd="/", env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_the_daemon_as_its_own_account_encrypts_a_real_freeswitch_recording(real: Real) -> None:
    account = require_unprivileged(real[1], "freeswitch")
    home = Path(tempfile.mkdtemp(prefix="cct-daemon-", dir="/var/tmp"))
    home.chmod(0o755)
    try:
        with pbx_dir(account, "fs-spool") as spool, pbx_dir(account, "fs-prompts") as prompts:
            config = home / "callconsent.toml"
            config.write_text(
                CONFIG.replace('data_dir = "data"', f'data_dir = "{home / "data"}"')
                .replace('node = "pbx-realfs"', f'node = "pbx-realfs"\nuser = "{USER}"')
                .replace(
                    "[freeswitch]\nenabled = true",
                    f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
                    f"[metrics]\nport = {free_port()}\n"
                    f'[freeswitch]\nenabled = true\nesl_user = "callconsent@127.0.0.1"\n'
                    f'esl_password = "rt-{os.urandom(8).hex()}"\nesl_port = {real[1]}',
                )
            )  # fmt: skip
            config.chmod(0o640)
            os.chown(config, 0, daemon_account.GID)  # as deploy/: root:callconsent 0640
            cfg = config_mod.load(config)
            make_prompts(prompts, ("en",))
            hand_over(prompts, account)
            install(real[3], cfg, home / "rendered")
            asyncio.run(reload_xml(real))  # the daemon's ESL user, before it logs in
            env = {**os.environ, "CALLCONSENT_KEY_PASSPHRASE": PASSPHRASE}
            done = subprocess.run(
                [sys.executable, "-m", "callconsent", "--config", str(config), "keys", "init"],
                capture_output=True, text=True, env=env, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            log = home / "serve.log"
            daemon = serve_as_the_account(config, log)
            try:
                deadline = time.monotonic() + 60
                while "event=ready" not in log.read_text():
                    assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
                status = Path(f"/proc/{daemon.pid}/status").read_text()
                assert f"Uid:\t{daemon_account.UID}\t" in status

                async def call() -> None:
                    admin = await open_inbound(real[0], real[1], real[2])
                    try:
                        await until(
                            lambda: "event=esl_connected" in log.read_text(),
                            "the daemon's ESL login",
                            30,
                        )
                        await Driver(admin).originate("cc_in_default_talk", PHONE)
                        db = cfg.data_dir / "callconsent.db"
                        await until(
                            lambda: [s for s, _ in recordings(db)] == ["encrypted"],
                            "the recording encrypted by the daemon",
                            60,
                        )
                    finally:
                        await admin.close()

                asyncio.run(call())
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
            text = log.read_text()
            assert "Traceback" not in text and " error " not in text, text
            [(state, vault)] = recordings(cfg.data_dir / "callconsent.db")
            assert state == "encrypted"
            assert Path(vault).stat().st_uid == daemon_account.UID
            assert list(spool.rglob("*.wav")) == []  # the plaintext is gone
            assert not_the_accounts(cfg.data_dir) == []
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
