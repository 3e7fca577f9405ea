"""Records what the real Asterisk and callconsent said to each other, in the format of the
shared captures (``asterisk-bridge/``: ``<t> #<conn> RX|TX b'<line>'`` for FastAGI,
``<t> <user> RX b'<whole message>'`` for AMI, one clock), so that what the real PBX showed
becomes a fixture the simulator is checked against (``tests/fixtures/asterisk-real/``).

* :class:`AgiTap` sits between Asterisk and our FastAGI server (Asterisk dials the tap, the
  tap dials our server) and writes down every line, byte for byte;
* :class:`AmiTap` is one more AMI login that writes down every event of our test calls.

Run as a script against the lab (``source /opt/pbx/env.sh``) to record the fixtures again::

    .venv/bin/python tests/support/asterisk_real_capture.py tests/fixtures/asterisk-real

The scenarios are the realpbx tests' flows, and one flow as it was before the adapter held a
beeping recording back (the prompt stall of Asterisk 22.11, see ``docs/asterisk.md``).
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Transcript:
    """Both sides of one scenario on one clock."""

    scenario: str
    t0: float = field(default_factory=time.monotonic)
    agi: list[str] = field(default_factory=list)
    ami: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def agi_line(self, conn: int, direction: str, line: bytes) -> None:
        self.agi.append(f"{self.now():8.3f} #{conn} {direction} {line!r}")

    def ami_message(self, user: str, raw: bytes) -> None:
        self.ami.append(f"{self.now():8.3f} {user} RX {raw!r}")

    def note(self, text: str) -> None:
        self.agi.append(f"{self.now():8.3f} NOTE {text}")

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        heads = {
            "agi": f"# scenario {self.scenario}: FastAGI, recorded by"
            " tests/asterisk_real_capture.py. Columns: seconds since the scenario's start"
            " (same clock as the ami file),"
            " #connection, RX (Asterisk->us) / TX (us->Asterisk), the exact bytes of one line.",
            "ami": f"# scenario {self.scenario}: AMI events of the scenario's calls, recorded by"
            " tests/asterisk_real_capture.py. Columns: seconds, AMI user, RX, the exact bytes of"
            " one whole message.",
        }
        out = []
        for kind, lines in (("agi", self.agi), ("ami", self.ami)):
            path = directory / f"{kind}-{self.scenario}.log.gz"
            text = "\n".join([heads[kind], *lines]) + "\n"
            path.write_bytes(gzip.compress(text.encode(), mtime=0))
            out.append(path)
        return out


class AgiTap:
    """A FastAGI relay on ``port`` to our server on ``upstream``, recording each line."""

    def __init__(self, transcript: Transcript, port: int, upstream: int) -> None:
        self.transcript, self.port, self.upstream = transcript, port, upstream
        self._server: asyncio.base_events.Server | None = None
        self._conns = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn = self._conns
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            a_writer.close()
            return

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
        ) -> None:
            try:
                while line := await reader.readline():
                    self.transcript.agi_line(conn, direction, line)
                    writer.write(line)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                self.transcript.agi.append(f"{self.transcript.now():8.3f} #{conn} CLOSE")
                writer.close()

        await asyncio.gather(pump(a_reader, s_writer, "RX"), pump(s_reader, a_writer, "TX"))


class AmiTap:
    """An AMI login (the lab's write=all user, events on) that keeps the events of our test
    calls: those whose linkedid is ``cct-…`` (the harness's ChannelIds) and those of the
    channels Asterisk's periodic beep creates."""

    def __init__(self, transcript: Transcript, host: str, port: int, user: str, secret: str):
        self.transcript = transcript
        self.host, self.port, self.user, self.secret = host, port, user, secret
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._writer = writer
        await reader.readline()  # banner
        writer.write(
            f"Action: Login\r\nUsername: {self.user}\r\nSecret: {self.secret}\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while raw := await reader.readuntil(b"\r\n\r\n"):
                if self._ours(raw):
                    self.transcript.ami_message(self.user, raw)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass

    @staticmethod
    def _ours(raw: bytes) -> bool:
        if not raw.startswith(b"Event: "):
            return False
        return b"Linkedid: cct-" in raw or b"__func_periodic_hook_context__" in raw

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()


# -- the recorded scenarios (run as a script) -------------------------------------------------


async def _beep_scenario(r: object) -> None:
    from asterisk_real_harness import Real

    assert isinstance(r, Real)
    token = await r.inbound("talk", ANSWER="1", HOLD="60")
    started = await r.event("CCTest", token, wait_s=40)
    await asyncio.sleep(3)
    await r.hangup(started["Channel"])
    await r.finished(token)


async def _queue_scenario(r: object) -> None:
    from asterisk_real_harness import Real

    assert isinstance(r, Real) and r.lab.queue is not None
    token = await r.inbound("waittalk", QUEUE=r.lab.queue, __RING="2")
    started = await r.event("CCTest", token)
    await r.event("BridgeEnter", wait_s=30, Uniqueid=started["Uniqueid"])
    await asyncio.sleep(2)
    await r.hangup(started["Channel"])
    await r.finished(token)


def main(out: Path) -> None:
    from asterisk_real import from_environment, open_lab, why_not_reachable
    from asterisk_real_harness import go

    import agi.control

    target = from_environment()
    reason = why_not_reachable(target)
    if reason or target is None:
        sys.exit(f"cannot record: {reason}")
    beep = "[policies.sales]\nbeep_interval_s = 2\n"
    queue = '[policies.sales]\nrecord_from = "agent_answer"\n'
    with open_lab(target) as lab:
        tmp = out / ".tmp"
        scenarios = [
            ("r1_queue_agent_answer", _queue_scenario, queue),
            ("r2_beep_held_back", _beep_scenario, beep),
        ]
        for name, scenario, policies in scenarios:
            (tmp / name).mkdir(parents=True, exist_ok=True)
            transcript = Transcript(name)
            go(lab, tmp / name, scenario, policies=policies, capture=transcript)
            print(*transcript.write(out))
        # the same beeping call as the adapter handled it before: MixMonitor B() at once
        agi.control.ChannelControl.prompts_follow = property(  # type: ignore[assignment]
            lambda self: False, lambda self, value: None
        )
        try:
            transcript = Transcript("r3_beep_stalls_the_prompt")
            (tmp / "r3").mkdir(parents=True, exist_ok=True)
            go(lab, tmp / "r3", _beep_scenario, policies=beep, capture=transcript)
            print(*transcript.write(out))
        finally:
            del agi.control.ChannelControl.prompts_follow
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]).resolve())  # Asterisk reads the prompts: an absolute path
