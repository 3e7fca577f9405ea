"""The daemon installed as deploy/README.md says, against the real FreeSWITCH (issue 14, point
7): `callconsent serve` runs as its own account in its own process (tests/support/
daemon_process.py), not inside the test; FreeSWITCH, as its own account, writes the recording
into the spool both accounts share (2770, group ``callconsent``); the daemon encrypts it.
Every file of the daemon's state is its account's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import daemon_account
import pytest
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
from fake_pbx import make_prompts
from freeswitch_real import CONFIG, Driver, Real, endpoint, install, until
from pbx_account import hand_over, pbx_dir, require_unprivileged

from callconsent import config as config_mod
from esl_listener.connection import open_inbound

pytestmark = MARKS

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


def test_the_daemon_as_its_own_account_encrypts_a_real_freeswitch_recording(real: Real) -> None:
    account = require_unprivileged(real[1], "freeswitch")
    with (
        daemon_home() as home,
        pbx_dir(account, "fs-spool") as spool,
        pbx_dir(account, "fs-prompts") as prompts,
    ):
        config = home / "callconsent.toml"
        write_config(
            config,
            CONFIG.replace('data_dir = "data"', f'data_dir = "{home / "data"}"')
            .replace('node = "pbx-realfs"', f'node = "pbx-realfs"\nuser = "{USER}"')
            .replace(
                "[freeswitch]\nenabled = true",
                f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompts}"\n'
                f"[metrics]\nport = {free_port()}\n"
                f'[freeswitch]\nenabled = true\nesl_user = "callconsent@127.0.0.1"\n'
                f'esl_password = "rt-{os.urandom(8).hex()}"\nesl_port = {real[1]}',
            ),
        )
        cfg = config_mod.load(config)
        make_prompts(prompts, ("en",))
        hand_over(prompts, account)
        install(real[3], cfg, home / "rendered")
        asyncio.run(reload_xml(real))  # the daemon's ESL user, before it logs in
        keys_init(config)
        log, db = home / "serve.log", cfg.data_dir / "callconsent.db"
        with serving(config, log):

            async def call() -> None:
                admin = await open_inbound(real[0], real[1], real[2])
                try:
                    await until(
                        lambda: "event=esl_connected" in log.read_text(), "the ESL login", 30
                    )
                    await Driver(admin).originate("cc_in_default_talk", PHONE)
                    await until(
                        lambda: [s for s, _ in recordings(db)] == ["encrypted"],
                        "the recording encrypted by the daemon",
                        60,
                    )
                finally:
                    await admin.close()

            asyncio.run(call())
        quiet(log)
        [(_, vault)] = recordings(db)
        assert Path(vault).stat().st_uid == daemon_account.UID
        assert list(spool.rglob("*.wav")) == []  # the plaintext is gone
        assert not_the_accounts(cfg.data_dir) == []
