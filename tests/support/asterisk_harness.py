"""The daemon's Asterisk component and the simulated Asterisk, wired over real sockets:
callconsent's App on SQLite in a temp dir, our FastAGI server and AMI client, the simulator's
AMI server and FastAGI client running our rendered dialplan."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from asterisk_sim import SimAsterisk, wav_header
from asterisk_sim_ami import AmiUser

from agi.adapter import AsteriskOptions
from agi.dialplan import DialplanSettings, render
from agi.service import AsteriskService
from callconsent import config as config_mod
from callconsent.app import App
from consent_ivr.policy import PROMPT_IDS
from recorder.store.models import AuditEntry, Call, ConsentRecord, Recording

# seconds of each prompt (the captures' prompts: consent 5.5 s, thanks 3.4 s, …)
DURATIONS = {"consent": 5.5, "notice": 4.0, "thanks": 3.4, "declined": 4.6, "no_input": 3.1}
AGENT_PROMPTS = ("agent-refused", "agent-done", "agent-status-granted", "agent-status-declined")
AMI_USER, AMI_SECRET = "callconsent", "s3cret-for-tests"
SYSTEM_USER, SYSTEM_SECRET = "callconsent-system", "system-s3cret"


def write_wav(path: Path, seconds: float, level: int = 0) -> None:
    data = struct.pack("<h", level) * int(seconds * 8000)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_header(len(data)) + data)


def make_prompts(root: Path, languages: tuple[str, ...] = ("en", "de")) -> None:
    for lang in languages:
        for i, prompt_id in enumerate(PROMPT_IDS):
            write_wav(root / lang / f"{prompt_id}.wav", DURATIONS[prompt_id], i)
        for name in AGENT_PROMPTS:
            write_wav(root / lang / f"{name}.wav", 0.5)


class SinkSpy:
    """Stands in for the finalizer: what the ledger hands over, and whether it was final."""

    def __init__(self) -> None:
        self.closed: list[str] = []
        self.discarded: list[str] = []

    def recording_closed(self, recording_id: str) -> None:
        self.closed.append(recording_id)

    def recording_discarded(self, recording_id: str) -> None:
        self.discarded.append(recording_id)


class StoreView:
    """What a test reads back from the store of its App."""

    app: App

    def evidence(self, call_id: str) -> list[ConsentRecord]:
        with self.app.db.read() as s:
            q = sa.select(ConsentRecord).where(ConsentRecord.call_id == call_id)
            return list(s.scalars(q.order_by(ConsentRecord.decided_at)))

    def recordings(self, call_id: str) -> list[Recording]:
        return self.app.ledger.recordings_of_call(call_id)


@dataclass
class Harness(StoreView):
    app: App
    service: AsteriskService
    sim: SimAsterisk
    sink: SinkSpy
    dialplan_dir: Path
    extra: dict[str, object] = field(default_factory=dict)

    def rows(self, model: type) -> list:  # type: ignore[type-arg]
        with self.app.db.read() as s:
            return list(s.scalars(sa.select(model)))

    def call_row(self, linkedid: str) -> Call:
        with self.app.db.read() as s:
            return s.scalars(sa.select(Call).where(Call.pbx_call_id == linkedid)).one()

    def audit_actions(self) -> list[str]:
        with self.app.db.read() as s:
            return list(s.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))

    async def settle(self) -> None:
        """Let AMI events in flight arrive, and the closures and call endings they start
        finish (until nothing has been pending for a moment)."""
        adapter = self.service.adapter
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.02)
            busy = bool(adapter._tasks or adapter.closer._tasks)
            await adapter.drain(5.0)
            quiet = 0 if busy else quiet + 1


def write_config(tmp: Path, policies: str, asterisk: str) -> Path:
    path = tmp / "callconsent.toml"
    path.write_text(
        '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n\n'
        f"[asterisk]\nenabled = true\n{asterisk}\n\n{policies}\n"
    )
    return path


@contextlib.asynccontextmanager
async def harness(
    tmp: Path,
    *,
    policies: str = "",
    ami: bool = True,
    system_user: str | None = None,
    ami_users: dict[str, AmiUser] | None = None,
    speed: float = 50.0,
) -> AsyncIterator[Harness]:
    users = ami_users or {
        AMI_USER: AmiUser(AMI_SECRET, {"call"}),
        SYSTEM_USER: AmiUser(SYSTEM_SECRET, {"system", "call"}),
    }
    sim = SimAsterisk(speed=speed, ami_users=users)
    await sim.start()
    settings = [
        "agi_port = 4573",
        f"ami_port = {sim.ami.port}",
        "header_wait_s = 1.0",
        "command_timeout_s = 5.0",
    ]
    if ami:
        settings += [f'ami_user = "{AMI_USER}"', f'ami_secret = "{AMI_SECRET}"']
    if system_user:
        settings += [f'ami_system_user = "{system_user}"', f'ami_system_secret = "{SYSTEM_SECRET}"']
    cfg = config_mod.load(write_config(tmp, policies, "\n".join(settings)))
    sink = SinkSpy()
    app = App.open(cfg, sink=sink)
    make_prompts(cfg.prompt_dir)
    app.prompts.reload()
    options = AsteriskOptions.from_settings(cfg.asterisk)
    options = AsteriskOptions(**{**options.__dict__, "agi_port": 0})
    service = AsteriskService(app.calls, app.spool, options, cfg.prompt_dir)
    await service.start()
    dialplan_dir = tmp / "dialplan"
    dialplan_dir.mkdir()
    files = render(DialplanSettings(agi_port=service.server.port, spool=str(app.spool.path)))
    for name, text in files.items():
        (dialplan_dir / name).write_text(text)
    sim.load_dialplan(dialplan_dir)
    h = Harness(app, service, sim, sink, dialplan_dir)
    try:
        yield h
    finally:
        await service.stop()
        await sim.stop()
        app.close()
