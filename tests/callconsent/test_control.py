"""The control socket: `callconsent record …` reaches the live call inside the daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_pbx import FakePbx, make_prompts

import consent_ivr as c
from callconsent import cli
from callconsent.control import ControlServer, request
from recorder.live.callbook import CallBook
from recorder.store.ledger import Ledger


def test_record_commands_go_through_the_daemon(ledger: Ledger, tmp_path: Path) -> None:
    async def scenario() -> None:
        book = CallBook(ledger, c.PolicyBook, make_prompts(tmp_path / "prompts"))
        live = await book.open(pbx="asterisk", pbx_call_id="1795348625.74", campaign="default")
        await live.run_dialogue(FakePbx([c.DigitReceived("1"), c.PromptFinished("thanks")]))
        live.control = control = FakePbx([])
        server = ControlServer(tmp_path / "control.sock", book)
        await server.start()
        try:

            async def ask(**kw: object) -> dict:
                payload = {"op": "record", "actor": "alice", **kw}
                return await asyncio.to_thread(request, server.path, payload)

            ok = await ask(verb="pause", call="1795348625.74")
            assert ok == {"ok": True, "status": "granted", "done": ["PauseRecording"]}
            again = await ask(verb="pause", call="1795348625.74")
            assert again == {"ok": False, "error": "pause refused: no recording is active"}
            missing = await ask(verb="stop", call="nope")
            assert "no call nope in progress" in missing["error"]
            bad = await ask(verb="explode", call="1795348625.74")
            assert "verb must be one of" in bad["error"]
            done = await ask(verb="discard", call="1795348625.74", pbx="asterisk")
            assert done["ok"] and done["status"] == "declined"
        finally:
            await server.stop()
        assert [e[0] for e in control.calls] == ["pause", "reject", "set", "stop"]
        assert not server.path.exists()

    asyncio.run(scenario())


def test_record_without_a_daemon_says_so(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--config", str(config_file), "record", "pause", "--call", "1.2"])
    assert code == 1
    assert "the daemon is not running here" in capsys.readouterr().err
