"""Drive the FreeSWITCH adapter against the simulated FreeSWITCH (``freeswitch_sim``): open an
App, run a scenario with the service started, place a call, read what the store kept."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from fake_pbx import make_prompts
from freeswitch_sim import Caller, FakeFreeSwitch, Leg

from callconsent import config as config_mod
from callconsent.app import App
from esl_listener.service import FreeswitchService, Settings
from recorder.store.models import ConsentRecord


def open_app(tmp_path: Path, config: str, languages: tuple[str, ...]) -> App:
    """An App on ``config`` with prompts in ``languages`` (the caller closes it)."""
    path = tmp_path / "callconsent.toml"
    path.write_text(config)
    application = App.open(config_mod.load(path))
    make_prompts(application.config.prompt_dir, languages)
    application.prompts.reload()
    return application


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait for the daemon to have handled what the simulator sent (bounded, not a timing goal)."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


Scenario = Callable[[App, FakeFreeSwitch, FreeswitchService], Awaitable[None]]


def run(app: App, scenario: Scenario, fs: FakeFreeSwitch | None = None, **settings: object) -> None:
    async def main() -> None:
        sim = fs or FakeFreeSwitch()
        await sim.start()
        options = {"outbound_port": 0, "esl_port": sim.port, "esl_password": "ClueCon"} | settings
        svc = FreeswitchService(app.calls, app.spool, Settings(**options))  # type: ignore[arg-type]
        await svc.start()
        try:
            await until(lambda: svc.inbound.connected.is_set(), "inbound ESL connected")
            await scenario(app, sim, svc)
        finally:
            await svc.stop()
            await sim.stop()

    asyncio.run(main())


async def call(
    fs: FakeFreeSwitch, svc: FreeswitchService, campaign: str, caller: Caller, **leg: object
) -> Leg:
    number = str(leg.pop("number", "4915112345"))
    customer = fs.new_leg("consent", number, socket_path=f"consent/{campaign}", **leg)  # type: ignore[arg-type]
    sim = await fs.call(svc.outbound.port, customer, caller)
    customer.sim = sim  # type: ignore[attr-defined]
    return customer


def rows(app: App, model: type) -> list:
    with app.db.read() as s:
        return list(s.scalars(sa.select(model)))


def decision(app: App) -> ConsentRecord:
    (record,) = [r for r in rows(app, ConsentRecord) if r.kind == "decision"]
    return record


def valid_wav(path: Path) -> tuple[int, int]:
    with wave.open(str(path)) as w:
        return w.getnchannels(), w.getnframes()
