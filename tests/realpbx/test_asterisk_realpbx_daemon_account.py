"""The daemon installed as deploy/README.md says, against the real Asterisk (issue 14, point
7): `callconsent serve` runs as its own account in its own process (tests/support/
daemon_process.py), not inside the test; Asterisk, as its own account, reaches our FastAGI
server and writes the MixMonitor file into the spool both accounts share (2770, group
``callconsent``); the daemon encrypts it. Every file of the daemon's state is its account's."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest
from asterisk_real import Lab
from asterisk_real_harness import lab_or_skip, write_prompts
from cli_host import free_port
from daemon_process import (
    MARKS,
    USER,
    daemon_home,
    keys_init,
    not_the_accounts,
    quiet,
    recordings,
    serving,
    write_config,
)
from panoramisk.message import Message
from realpbx_faults import originate_accepting

from agi.ami import AmiClient

pytestmark = MARKS


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_or_skip()


async def until(check, what: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 20)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_the_daemon_as_its_own_account_encrypts_a_real_asterisk_recording(lab: Lab) -> None:
    spool = lab.target.spool / f"cct-{secrets.token_hex(4)}"
    prompts = Path(f"{spool}-prompts")
    for made in (spool, prompts):
        made.mkdir(mode=0o2770)
        made.chmod(0o2770)  # the PBX's account and ours: group callconsent, by the setgid bit
    try:
        with daemon_home() as home:
            config = home / "callconsent.toml"
            write_config(
                config,
                f'[daemon]\ndata_dir = "{home / "data"}"\nnode = "pbx-test"\nuser = "{USER}"\n'
                f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
                f"[metrics]\nport = {free_port()}\n"
                f"[asterisk]\nenabled = true\nagi_port = {lab.agi_port}\n"
                f'ami_port = {lab.target.port}\nami_user = "{lab.ami_user}"\n'
                f'ami_secret = "{lab.ami_secret}"\n'
                "[policies.default]\ndigit_timeout_ms = 2000\n",
            )
            write_prompts(prompts)
            keys_init(config)
            log, db = home / "serve.log", home / "data" / "callconsent.db"
            with serving(config, log):
                asyncio.run(call(lab, db))
            quiet(log)
            [(_, vault)] = recordings(db)
            assert Path(vault).stat().st_uid == daemon_account.UID
            assert list(spool.rglob("*.wav")) == []  # the plaintext is gone
            assert not_the_accounts(home / "data") == []
    finally:
        for made in (spool, prompts):
            shutil.rmtree(made, ignore_errors=True)


async def call(lab: Lab, db: Path) -> None:
    """An inbound call that accepts (the caller's phone: ``[cct-phone] accept``), to its end,
    then until the daemon has encrypted its recording."""
    events: list[Message] = []
    t = lab.target
    observer = AmiClient(
        t.host, t.port, t.user, t.secret, on_event=events.append, events="on", name="test"
    )
    assert await observer.start()
    token = secrets.token_hex(6)
    try:
        await originate_accepting(observer, token, hold_s=4, talk_s=2)

        def ended() -> bool:
            return any(
                m.get("UserEvent") == "CCTestEnd" and m.get("Token") == token for m in events
            )

        await until(ended, "the call's end", 60)
        decided = [m for m in events if m.get("UserEvent") == "CCTest" and m.get("Token") == token]
        assert decided and decided[0].get("Status") == "granted", decided
        await until(
            lambda: [s for s, _ in recordings(db)] == ["encrypted"],
            "the recording encrypted by the daemon",
            60,
        )
    finally:
        await observer.stop()
