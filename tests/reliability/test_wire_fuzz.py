"""The assembled daemon's four wire surfaces fed mutated captured frames (hypothesis): the
FastAGI server, the ESL outbound server, the ESL inbound client and the AMI event path. Each
hostile connection ends (a hang fails), logs no error and no traceback, writes no row and
starts no recording; the daemon keeps serving: a real call through the simulator afterwards
is decided and recorded as usual, and the audit chain (with its seals) verifies.

Examples per test: ``CALLCONSENT_FUZZ_EXAMPLES`` (25 here, 300 in ``make reliability``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator

import fs_captures as fc
import pytest
import sqlalchemy as sa
from asterisk_captures import fixture, parse_agi_capture, parse_ami_capture
from asterisk_harness import Harness, harness
from asterisk_sim import hangup, press
from freeswitch_rig import open_app
from freeswitch_sim import Caller, FakeFreeSwitch
from hypothesis import given
from wirefuzz import FUZZ, LogTap, LoopThread, mutated, pieces, problems_in, send_and_hang_up

from callconsent.app import App
from esl_listener.service import FreeswitchService, Settings
from recorder.store import audit
from recorder.store.models import Call, ConsentRecord, Recording

# a failing example of several megabytes is reported in full anyway: no warning about its size
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

AGI_FRAMES = [
    e.data
    for name in ("asterisk/agi-decline-1795345576.9.log", "asterisk-bridge/agi-s7_injection.log")
    for conn in parse_agi_capture(fixture(name))
    for e in conn.entries
    if e.kind == "RX"
]
AMI_FRAMES = [
    m.raw
    for m in parse_ami_capture(fixture("asterisk-bridge/ami-s1_consent_bridge.log"))
    if m.direction == "RX" and m.raw.startswith(b"Event:")
]
ESL_OUTBOUND_FRAMES = [
    s.data for s in fc.load("accept_record_session").steps if s.direction == "rx"
]
CAPTURED_CHANNEL = b"bfd9fadb-33c5-469f-9ffc-6bc94fd47352"
ESL_EVENT_FRAMES = [f for f in ESL_OUTBOUND_FRAMES if b"text/event-plain" in f]


def count(app: App, model: type) -> int:
    with app.db.read() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def wait_for(check, what: str, timeout: float = 8.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never happened within {timeout} s: {what}")
        time.sleep(0.01)


def nothing_stored(app: App) -> None:
    assert (count(app, Call), count(app, ConsentRecord), count(app, Recording)) == (0, 0, 0)
    assert [p.name for p in app.spool.path.iterdir()] == [], "no recording file appeared"


def chain_and_seals_verify(app: App) -> None:
    with app.db.read() as s:
        report = audit.verify(s)
    assert report.ok, (report.problems, report.content)


# -- Asterisk: FastAGI server and AMI -------------------------------------------------------


@pytest.fixture(scope="module")
def asterisk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, Harness]]:
    loop = LoopThread()
    context = harness(tmp_path_factory.mktemp("asterisk"))
    h = loop.run(context.__aenter__(), timeout=60)
    yield loop, h
    loop.run(context.__aexit__(None, None, None), timeout=60)
    loop.close()


def control_call(loop: LoopThread, h: Harness) -> None:
    """A real call after the fuzzing: decided and recorded as usual."""

    async def call() -> None:
        c = await h.sim.inbound("sales", [press("1", "consent", 1.2), hangup("talk", 1.0)])
        await h.settle()
        assert c.gosub_retval == "granted"
        (rec,) = h.recordings(h.call_row(c.customer.linkedid).id)
        assert rec.state == "closed"

    loop.run(call(), timeout=60)


@FUZZ
@given(mutated(AGI_FRAMES, max_frames=40))
def test_fastagi_server_survives_mutated_sessions(
    asterisk: tuple[LoopThread, Harness], case: tuple[bytes, list[int]]
) -> None:
    _, h = asterisk
    with LogTap() as tap:
        send_and_hang_up(h.service.server.port, pieces(*case))
        wait_for(lambda: not h.service.server.sessions, "the session ended")
        records = tap.take()
    assert problems_in(tap, records) == []
    warnings = [tap.line(r) for r in records if r.levelname == "WARNING"]
    assert len(warnings) <= 2, warnings  # an anomaly noted, then how it ended
    nothing_stored(h.app)


@FUZZ
@given(mutated(AMI_FRAMES, max_frames=15))
def test_ami_event_path_survives_mutated_events(
    asterisk: tuple[LoopThread, Harness], case: tuple[bytes, list[int]]
) -> None:
    loop, h = asterisk
    wait_for(lambda: len(h.sim.ami.logged_in) >= 1, "the AMI client is logged in")

    async def inject() -> None:
        for client in list(h.sim.ami._clients):
            for part in pieces(*case):
                client.writer.write(part)
                await client.writer.drain()
        await h.settle()

    with LogTap() as tap:
        loop.run(inject())
        wait_for(lambda: len(h.sim.ami.logged_in) >= 1, "the AMI client is (back) in")
        records = tap.take()
    assert problems_in(tap, records) == []
    nothing_stored(h.app)


def test_asterisk_still_serves_calls_after_the_fuzzing(
    asterisk: tuple[LoopThread, Harness],
) -> None:
    loop, h = asterisk
    with LogTap() as tap:
        control_call(loop, h)
        assert problems_in(tap, tap.take()) == []
    chain_and_seals_verify(h.app)


# -- FreeSWITCH: ESL outbound server and inbound client -------------------------------------


class FsRig:
    def __init__(self, app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        self.app, self.fs, self.svc = app, fs, svc


@pytest.fixture(scope="module")
def freeswitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, FsRig]]:
    loop = LoopThread()
    app = open_app(
        tmp_path_factory.mktemp("fs"), '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n', ("en",)
    )

    async def start() -> FsRig:
        fs = FakeFreeSwitch()
        await fs.start()
        settings = Settings(outbound_port=0, esl_port=fs.port, esl_password="ClueCon")  # type: ignore[call-arg]
        svc = FreeswitchService(app.calls, app.spool, settings)
        await svc.start()
        return FsRig(app, fs, svc)

    rig = loop.run(start(), timeout=60)
    wait_for(rig.svc.inbound.connected.is_set, "inbound ESL connected")
    yield loop, rig

    async def stop() -> None:
        await rig.svc.stop()
        await rig.fs.stop()

    loop.run(stop(), timeout=60)
    loop.close()
    app.close()


def fresh_ids(data: bytes) -> bytes:
    """Each example is its own channel: the capture's channel UUID replaced by a new one."""
    return data.replace(CAPTURED_CHANNEL, str(uuid.uuid4()).encode())


@FUZZ
@given(mutated(ESL_OUTBOUND_FRAMES, max_frames=12))
def test_esl_outbound_server_survives_mutated_sessions(
    freeswitch: tuple[LoopThread, FsRig], case: tuple[bytes, list[int]]
) -> None:
    _, rig = freeswitch
    before = count(rig.app, Call)
    data, cuts = fresh_ids(case[0]), case[1]
    with LogTap() as tap:
        sent = send_and_hang_up(
            rig.svc.outbound.port, pieces(data, cuts), first_line=b"connect\n\n"
        )
        wait_for(lambda: rig.svc.outbound.active_sessions == 0, "the session ended")
        records = tap.take()
    assert problems_in(tap, records) == []
    assert b"uuid_record" not in sent and b"record_session" not in sent
    assert count(rig.app, Recording) == 0, "no recording without a decision"
    assert count(rig.app, Call) - before <= 1


@FUZZ
@given(mutated(ESL_EVENT_FRAMES, max_frames=12))
def test_esl_inbound_client_survives_mutated_events(
    freeswitch: tuple[LoopThread, FsRig], case: tuple[bytes, list[int]]
) -> None:
    loop, rig = freeswitch
    wait_for(lambda: rig.fs.inbound_clients == 1, "one inbound client")

    async def inject() -> None:
        for wire, *_ in list(rig.fs._inbound):
            # our client hanging up on the garbage mid-way is an expected outcome, not the
            # peer's failure: stop writing to that wire (what it logged is checked below)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for part in pieces(*case):
                    wire.send(part)
                    await wire.writer.drain()
            await asyncio.sleep(0.05)

    with LogTap() as tap:
        loop.run(inject())
        wait_for(rig.svc.inbound.connected.is_set, "the inbound client is (back) in")
        records = tap.take()
    assert problems_in(tap, records) == []
    assert count(rig.app, Recording) == 0


def test_freeswitch_still_serves_calls_after_the_fuzzing(
    freeswitch: tuple[LoopThread, FsRig],
) -> None:
    loop, rig = freeswitch
    for _ in range(3):  # connected, and still so a moment later (the last garbage is read)
        wait_for(lambda: rig.svc.inbound.connected.is_set() and rig.fs.inbound_clients == 1, "in")
        time.sleep(0.3)

    async def call() -> None:
        from freeswitch_rig import call as place

        await place(rig.fs, rig.svc, "default", Caller(["1", "hangup"]))
        for _ in range(1000):
            states = [r.state for r in rig.app.ledger.recordings_of_call(_last_call(rig.app))]
            if states == ["closed"]:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the call after the fuzzing was not recorded: {states}")

    with LogTap() as tap:
        loop.run(call(), timeout=60)
        assert problems_in(tap, tap.take()) == []
    chain_and_seals_verify(rig.app)


def _last_call(app: App) -> str:
    with app.db.read() as s:
        return s.scalars(sa.select(Call.id).order_by(Call.started_at.desc())).first() or ""
