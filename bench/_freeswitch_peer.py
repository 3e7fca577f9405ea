"""FreeSWITCH's side of the whole-daemon benchmark: the test suite's simulated FreeSWITCH
(``tests/sim/freeswitch_sim.py``, built from the captures) as the daemon's ESL server (its
inbound connection: events, ``uuid_*`` api) and as the ``socket`` application dialling the
daemon's outbound server for each call.

Each caller listens to the consent prompt for ``prompt_s`` (the simulator answers at once
otherwise), presses 1, ``record_session`` starts, the daemon exits the socket, the caller talks
for ``talk_s`` and hangs up: ``RECORD_STOP`` and ``CHANNEL_HANGUP_COMPLETE`` reach the daemon
over ESL, as in production. Timed here: accept digit → ``record_session``, and each call's
dialogue (socket connect to the daemon's ``exit``) less the prompt the caller listened to.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests" / "sim"))

import freeswitch_sim as fsim

CAMPAIGN = "sales"


class LoadFreeSwitch(fsim.FakeFreeSwitch):
    """The simulator, timing the accept digit and the recording's start per leg."""

    def __init__(self, password: str, prompt_s: float = 0.0) -> None:
        super().__init__(password=password)
        self.prompt_s = prompt_s
        self.digit_at: dict[str, float] = {}
        self.digit_to_record: list[float] = []

    def _start_recording(self, leg, path, vars_, wire) -> None:  # type: ignore[no-untyped-def]
        pressed = self.digit_at.pop(leg.uuid, None)
        if pressed is not None:
            self.digit_to_record.append(time.perf_counter() - pressed)
        super()._start_recording(leg, path, vars_, wire)


_original_pagd = fsim.SimCall._pagd


async def _listening_pagd(self, wire, arg, info):  # type: ignore[no-untyped-def]
    """The caller hears the prompt out, then presses (the simulator answers at once)."""
    fs = self.fs
    if isinstance(fs, LoadFreeSwitch) and fs.prompt_s:
        await asyncio.sleep(fs.prompt_s)
    result = await _original_pagd(self, wire, arg, info)
    if isinstance(fs, LoadFreeSwitch):
        fs.digit_at[self.leg.uuid] = time.perf_counter()
    return result


fsim.SimCall._pagd = _listening_pagd  # type: ignore[method-assign]


class Peer:
    """The calls of one round and their figures (same fields as the Asterisk peer's)."""

    def __init__(self, fs: LoadFreeSwitch, outbound_port: int, talk_s: float) -> None:
        self.fs, self.port, self.talk_s = fs, outbound_port, talk_s
        self.turnaround: list[float] = []  # the dialogue, less the prompt listened to
        self.done_at: list[float] = []
        self.active = self.peak = self.failures = 0

    @property
    def digit_to_record(self) -> list[float]:
        return self.fs.digit_to_record

    async def call(self) -> None:
        fs = self.fs
        leg = fs.new_leg("consent", "4915112345", socket_path=f"consent/{CAMPAIGN}")
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            start = time.perf_counter()
            sim = await fs.call(self.port, leg, fsim.Caller(["1"]))
            self.turnaround.append(time.perf_counter() - start - fs.prompt_s)
            if sim.refused or not leg.recordings:
                self.failures += 1
                return
            await asyncio.sleep(self.talk_s)
            fs.talk(leg, 0.5)
            await fs.hangup_leg(leg)
            self.done_at.append(time.monotonic())
        finally:
            self.active -= 1
            fs.legs.pop(leg.uuid, None)
