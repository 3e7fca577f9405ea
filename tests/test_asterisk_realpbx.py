"""The simulator's flows against a real Asterisk (``CALLCONSENT_ASTERISK``): our rendered
dialplan, features and AMI user loaded into it, real calls over Local channels originated over
AMI, our FastAGI server and our write=call AMI user doing the work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from asterisk_harness import SinkSpy, StoreView, write_wav
from asterisk_real import (
    TEST_CONTEXTS,
    RealAsterisk,
    ami_command,
    from_environment,
    new_secret,
    prefixed,
    speech_wav,
)
from panoramisk.message import Message

from agi.adapter import AsteriskOptions
from agi.ami import AmiClient
from agi.closure import header_final
from agi.dialplan import DialplanSettings, render
from agi.service import AsteriskService
from callconsent import config as config_mod
from callconsent.app import App
from consent_ivr.policy import PROMPT_IDS
from recorder.models import Call

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]
DROP_INS = ("extensions_callconsent.conf", "features_callconsent.conf", "manager_callconsent.conf")
# short prompts keep the calls short; the real ones are built by `callconsent prompts build`
DURATIONS = {"consent": 2.5, "notice": 1.5, "thanks": 1.0, "declined": 1.0, "no_input": 1.0}


@dataclass
class Lab:
    target: RealAsterisk
    agi_port: int
    ami_user: str
    ami_secret: str


def size(path: str) -> int:
    return os.stat(path).st_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    target = from_environment()
    if target is None:
        pytest.skip("CALLCONSENT_ASTERISK is not set: no real Asterisk to test against")
    try:
        ami_command(target, "core show version")
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"the Asterisk AMI at {target.host}:{target.port} does not answer: {exc}")
    missing = [n for n in DROP_INS if not (target.conf / n).exists()]
    if missing:
        pytest.skip(f"{target.conf} has no drop-in files {missing} to load our dialplan into")
    lab = Lab(target, _free_port(), "callconsent-test", new_secret())
    files = prefixed(
        render(
            DialplanSettings(
                agi_port=lab.agi_port,
                spool=str(target.spool),
                ami_user=lab.ami_user,
                ami_secret=lab.ami_secret,
            )
        )
    )
    files["extensions_callconsent.conf"] += TEST_CONTEXTS
    saved = {n: (target.conf / n).read_text() for n in DROP_INS}
    sounds = target.sounds
    sounds.mkdir(parents=True, exist_ok=True)
    for name, freq in (("cct-caller-speech", 440), ("cct-agent-speech", 660)):
        (sounds / f"{name}.wav").write_bytes(speech_wav(2.0, freq))
    try:
        for name, text in files.items():
            (target.conf / name).write_text(text)
        ami_command(target, "dialplan reload", "module reload features", "manager reload")
        yield lab
    finally:
        for name, text in saved.items():
            (target.conf / name).write_text(text)
        ami_command(target, "dialplan reload", "module reload features", "manager reload")
        for name in ("cct-caller-speech", "cct-agent-speech"):
            (sounds / f"{name}.wav").unlink(missing_ok=True)


@dataclass
class Real(StoreView):
    lab: Lab
    app: App
    service: AsteriskService
    observer: AmiClient
    sink: SinkSpy
    events: dict[str, list[Message]] = field(default_factory=dict)

    async def call(
        self, script: str, *, campaign: str = "sales", agent: str = "", talk: float = 2.0
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Originate a test call; returns the CCTest and CCTestEnd user events' fields."""
        token = secrets.token_hex(6)
        variables = [
            f"__CCTOKEN={token}",
            f"CAMPAIGN={campaign}",
            f"AGENT={agent}",
            "HOLD=4",
            f"TALK={talk}",
        ]
        await self.observer.action(
            "Originate",
            Channel="Local/cust@cct-in/n",
            Context="cct-phone",
            Exten=script,
            Priority="1",
            Async="true",
            Timeout="30000",
            CallerID='"Customer" <+4915112345678>',
            Variable=variables,  # type: ignore[arg-type]
        )
        end = await self._event("CCTestEnd", token, 90)
        started = self._find("CCTest", token)
        await asyncio.sleep(0.3)  # the Hangup event, then the closure (header 1-15 ms later)
        await self.service.adapter.drain(5.0)
        return ({k: str(v) for k, v in started.items()} if started else {}), {
            k: str(v) for k, v in end.items()
        }

    def _find(self, name: str, token: str) -> Message | None:
        return next((m for m in self.events.get(name, []) if m.get("Token") == token), None)

    async def _event(self, name: str, token: str, wait_s: float) -> Message:
        for _ in range(int(wait_s / 0.05)):
            found = self._find(name, token)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {name} for call {token} within {wait_s} s")

    def last_call(self) -> Call:
        with self.app.db.read() as s:
            return s.scalars(sa.select(Call).order_by(Call.started_at.desc())).first()


@contextlib.asynccontextmanager
async def real(lab: Lab, tmp: Path, policies: str = "") -> AsyncIterator[Real]:
    spool = lab.target.spool / f"cct-{secrets.token_hex(4)}"
    spool.mkdir(mode=0o2770)
    os.chmod(spool, 0o2770)
    prompt_dir = tmp / "prompts"
    cfg_path = tmp / "callconsent.toml"
    cfg_path.write_text(
        f'[daemon]\ndata_dir = "{tmp / "data"}"\nnode = "pbx-test"\n'
        f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompt_dir}"\n'
        f"[asterisk]\nenabled = true\nagi_port = {lab.agi_port}\n"
        f'ami_port = {lab.target.port}\nami_user = "{lab.ami_user}"\n'
        f'ami_secret = "{lab.ami_secret}"\n\n'
        "[policies.default]\ndigit_timeout_ms = 2000\n\n" + policies
    )
    cfg = config_mod.load(cfg_path)
    for lang in ("en",):
        for prompt_id in PROMPT_IDS:
            write_wav(prompt_dir / lang / f"{prompt_id}.wav", DURATIONS[prompt_id], 1000)
    for d in (prompt_dir, prompt_dir / "en"):
        os.chmod(d, 0o755)
    sink = SinkSpy()
    app = App.open(cfg, sink=sink)
    service = AsteriskService(
        app.calls, app.spool, AsteriskOptions.from_settings(cfg.asterisk), prompt_dir
    )
    r: Real
    events: dict[str, list[Message]] = {}

    def on_event(m: Message) -> None:
        if m.get("Event") == "UserEvent":
            events.setdefault(str(m.get("UserEvent")), []).append(m)

    observer = AmiClient(
        lab.target.host,
        lab.target.port,
        lab.target.user,
        lab.target.secret,
        on_event=on_event,
        name="test-observer",
    )
    await service.start()
    assert service.adapter.ami is not None and service.adapter.ami.connected, (
        "our AMI user did not log in"
    )
    assert await observer.start()
    r = Real(lab, app, service, observer, sink, events)
    try:
        yield r
    finally:
        await observer.stop()
        await service.stop()
        app.close()
        shutil.rmtree(spool, ignore_errors=True)


def go(lab: Lab, tmp: Path, scenario, policies: str = "") -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with real(lab, tmp, policies) as r:
            await scenario(r)

    asyncio.run(main())


def test_real_accept(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("accept", talk=2.0)
        assert (started["Status"], started["Agistatus"], started["Retval"]) == (
            "granted",
            "SUCCESS",
            "granted",
        )
        call = r.last_call()
        assert call.consent_status == "granted" and call.ended_at is not None
        (decision,) = r.evidence(call.id)
        assert [d["digit"] for d in decision.digits] == ["1"]
        (rec,) = r.recordings(call.id)
        assert rec.id == started["Rec"] and rec.pbx_ref == started["Mixmon"]
        assert rec.state == "closed"
        assert header_final(Path(rec.spool_path)) and size(rec.spool_path) > 44
        assert r.sink.closed == [rec.id]

    go(lab, tmp_path, scenario)


def test_real_decline(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("decline")
        assert started["Status"] == "declined"
        call = r.last_call()
        assert r.recordings(call.id) == []
        assert list(r.app.spool.path.iterdir()) == []

    go(lab, tmp_path, scenario)


def test_real_silence(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("silence", talk=14.0)
        assert started["Status"] == "no_input"
        call = r.last_call()
        (decision,) = r.evidence(call.id)
        assert decision.attempts == 2 and r.recordings(call.id) == []

    go(lab, tmp_path, scenario)


def test_real_hangup_during_the_prompt(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.call("early")
        call = r.last_call()
        (decision,) = r.evidence(call.id)
        assert (decision.status, decision.method) == ("no_input", "hangup")
        assert call.ended_at is not None and r.recordings(call.id) == []

    go(lab, tmp_path, scenario)


def test_real_hangup_while_recording(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.call("talkhang")
        call = r.last_call()
        (rec,) = r.recordings(call.id)
        assert rec.state == "closed" and header_final(Path(rec.spool_path))
        assert size(rec.spool_path) > 8000  # the caller's speech was recorded

    go(lab, tmp_path, scenario)


def test_real_service_down(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.service.server.stop()
        started, _ = await r.call("accept", talk=0.5)
        assert (started["Agistatus"], started["Status"], started["Retval"]) == (
            "FAILURE",
            "unavailable",
            "unavailable",
        )

    go(lab, tmp_path, scenario)


def test_real_agent_feature_codes(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        _, end = await r.call("talkloop", agent="agent-feat")
        call = r.last_call()
        recs = r.recordings(call.id)
        assert [x.state for x in recs] == ["discarded", "discarded"]
        assert {x.discard_reason for x in recs} == {"agent_discard"}
        changes = [e for e in r.evidence(call.id) if e.kind == "change"]
        assert [(e.status, e.method) for e in changes] == [("declined", "agent_discard")]
        assert end["Status"] == "declined"  # set on the customer leg by AMI Setvar
        assert "tccstart" not in end.get("Features", "")  # the codes never reached the customer leg
        assert sorted(r.sink.discarded) == sorted(x.id for x in recs)

    go(lab, tmp_path, scenario)


def test_the_spool_modes_are_what_the_daemon_demands(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        mode = stat.S_IMODE(r.app.spool.path.stat().st_mode)
        assert mode == 0o2770

    go(lab, tmp_path, scenario)
