"""Asterisk's side of the whole-daemon benchmark: FastAGI channels and an AMI server.

Each channel runs ``agi://…/consent/sales`` the way Asterisk 22 does (the environment of a real
capture, base64 expressions evaluated, the ``cc-sync`` nonce echoed; the reply forms of
``bench/agi_load.py``): the caller listens to the consent prompt for ``prompt_s`` and presses 1,
``MixMonitor`` creates its spool file, and when the daemon hands the call back the caller talks
for ``talk_s``; then Asterisk closes the file (a final WAV header) and the AMI server (the test
simulator's, :class:`asterisk_sim_ami.SimAmi`) sends ``Hangup`` for the customer leg, as in
production. Channels are protocol callbacks on one shared buffer (as ``agi_load.py``'s), so the
generator costs the two cores as little as it can.

Over AMI each call sends what Asterisk 22 sent for the captured consent call
(``asterisk/ami-accept_brief.log``, :class:`CallEvents`): 70 events of every class (channel
states, each AGI command's start and end, dialplan steps, variable sets, DTMF, the hangups).
The daemon's AMI user is the one we ship (``dialplan/asterisk/manager_callconsent.conf``:
``read = call`` and its ``eventfilter`` lines), so the daemon gets what an installation that
follows our docs gets; ``--ami-user all`` makes it a ``read = all`` user without filters
(the lab's ``test`` user), where the daemon's own login (``Events: call``) is the only filter.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import sys
import time
from pathlib import Path

from _common import ROOT, connect_loopback

sys.path.insert(0, str(ROOT / "tests" / "sim"))

from asterisk_captures import call_events, fixture, parse_agi_capture
from asterisk_sim_ami import AmiUser, SimAmi, manager_conf_user, message

CAMPAIGN = "sales"
WAV_SECONDS = 0.5  # what MixMonitor "recorded" (8 kHz, 16 bit, mono): 8,000 bytes


#: the captured call's uniqueids (the AGI channel, the customer leg; the other Local half)
#: and channel name, replaced by each call's own
_CAPTURED = {"1795345505.1": "@@UID@@", "1795345505.0": "@@OTHER@@"}
_CAPTURED_CHANNEL = "Local/s@consent-in-00000000"
#: in the capture but not part of a caller's call: the lab's Originate (``call_events`` leaves
#: out the login's)
_NOT_THE_CALL = {"OriginateResponse"}

#: (event class, event name, the event with @@…@@ where the call's ids go)
Chunk = list[tuple[str, str, bytes]]


class CallEvents:
    """The AMI events of the captured consent call, by when Asterisk sent them: ``before``
    the AGI script, ``commands`` (one chunk per AGI command, from its ``AGIExecStart`` to the
    next: its end, the variables it set, the DTMF), ``after`` it (the hangups)."""

    def __init__(self) -> None:
        events: Chunk = []
        for name, category, headers in call_events("asterisk/ami-accept_brief.log"):
            if name in _NOT_THE_CALL:
                continue
            stamp = f"{time.time():.6f}"  # when this generator started: nobody reads it
            pairs = [("Event", name), ("Privilege", f"{category},all"), ("Timestamp", stamp)]
            for key, value in headers:
                if key.endswith(("Uniqueid", "Linkedid")) and value in _CAPTURED:
                    value = _CAPTURED[value]
                pairs.append((key, value.replace(_CAPTURED_CHANNEL, "@@CHANNEL@@")))
            events.append((category, name, message(*pairs)))
        starts = [i for i, (_, n, _) in enumerate(events) if n == "AGIExecStart"]
        last_end = max(i for i, (_, n, _) in enumerate(events) if n == "AGIExecEnd")
        self.before = events[: starts[0]]
        self.commands = [
            events[a:b] for a, b in zip(starts, [*starts[1:], last_end + 1], strict=True)
        ]
        self.after = events[last_end + 1 :]
        self.count = len(events)


class LoadAmi(SimAmi):
    """The simulator's AMI server without its transcript (a load run sends a lot)."""

    def _send(self, client, data: bytes) -> None:  # type: ignore[no-untyped-def]
        client.writer.write(data)

    def send_events(self, chunk: Chunk, uid: str, n: int) -> None:
        """One call's events (with its ids) to each session that asked for their class."""
        for client in self._clients:
            if data := b"".join(e for c, name, e in chunk if client.wants(c, name)):
                self._send(
                    client,
                    data.replace(b"@@UID@@", uid.encode())
                    .replace(b"@@OTHER@@", f"{uid}o".encode())
                    .replace(b"@@CHANNEL@@", f"Local/s@consent-in-{n:08x}".encode()),
                )


def shipped_user(secret: str) -> AmiUser:
    """The AMI user of ``dialplan/asterisk/manager_callconsent.conf``."""
    conf = (ROOT / "dialplan" / "asterisk" / "manager_callconsent.conf").read_text()
    return manager_conf_user(conf, "callconsent", secret)


def ami_server(user: str, secret: str, shipped: bool = True) -> LoadAmi:
    """``shipped``: the user we ship; else a ``read = all`` user with no filter."""
    ami_user = shipped_user(secret) if shipped else AmiUser(secret, {"call"})
    return LoadAmi(sim=None, users={user: ami_user})  # type: ignore[arg-type]


def environment_template(agi_port: int) -> bytes:
    conn = parse_agi_capture(fixture("asterisk/agi-accept_brief-1795345505.1.log"))[0]
    lines = []
    for raw in b"".join(conn.environment).decode().splitlines(keepends=True):
        key = raw.split(":", 1)[0]
        if key == "agi_network_script":
            raw = f"agi_network_script: consent/{CAMPAIGN}\n"
        elif key == "agi_request":
            raw = f"agi_request: agi://127.0.0.1:{agi_port}/consent/{CAMPAIGN}\n"
        elif key == "agi_uniqueid":
            raw = "agi_uniqueid: {uid}\n"
        lines.append(raw)
    return "".join(lines).encode()


def final_wav(seconds: float = WAV_SECONDS) -> bytes:
    data = bytes(int(8000 * seconds) * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


class Peer:
    """The calls of one round, their figures, and what they share (buffer, AMI, env)."""

    def __init__(
        self, agi_port: int, ami: LoadAmi, prompt_s: float, talk_s: float, run: str
    ) -> None:
        self.agi_port, self.ami = agi_port, ami
        self.prompt_s, self.talk_s = prompt_s, talk_s
        self.env = environment_template(agi_port).decode()
        self.run = run  # unique per round: linkedids never repeat across rounds
        self.wav = final_wav()
        self.events = CallEvents()
        self.buffer = memoryview(bytearray(65536))
        self.turnaround: list[float] = []
        self.digit_to_record: list[float] = []
        self.done_at: list[float] = []  # monotonic time each call ended (hangup sent)
        self.active = self.peak = self.failures = self.n = 0

    async def call(self) -> None:
        self.n += 1
        uid = f"{self.run}.{self.n}"
        loop = asyncio.get_running_loop()
        channel = _Channel(self, uid, self.n, loop.create_future())
        if not await connect_loopback(self.agi_port, channel):
            self.failures += 1
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await channel.closed
            if not channel.recording:
                self.failures += 1
                return
            await asyncio.sleep(self.talk_s)  # the caller talks to the agent
            channel.hang_up()
            self.done_at.append(time.monotonic())
        finally:
            self.active -= 1


class _Channel(asyncio.BufferedProtocol):
    def __init__(self, peer: Peer, uid: str, n: int, closed: asyncio.Future[None]) -> None:
        self.peer, self.uid, self.n, self.closed = peer, uid, n, closed
        self.ami_chunks = list(peer.events.commands)  # one sent with each AGI command
        self.rest = b""
        self.sent = 0.0
        self.digit_sent = 0.0
        self.recording: Path | None = None
        self.transport: asyncio.Transport | None = None
        self.answers = {
            "CHANNEL(linkedid)": uid,
            "CALLERID(num)": "+4915112345678",
            "CALLERID(num-pres)": "allowed_not_screened",
            "CHANNEL(state)": "Up",
            "MIXMON_ID": f"0x7f23{abs(hash(uid)) % 0xFFFFFF:06x}",
            "DYNAMIC_FEATURES": "",
        }

    def ami(self, chunk: Chunk) -> None:
        self.peer.ami.send_events(chunk, self.uid, self.n)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ami(self.peer.events.before)
        self.transport.write(self.peer.env.replace("{uid}", self.uid).encode())
        self.sent = time.perf_counter()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.peer.buffer

    def buffer_updated(self, nbytes: int) -> None:
        *lines, self.rest = (self.rest + self.peer.buffer[:nbytes].tobytes()).split(b"\n")
        for line in lines:
            self.line(line)

    def line(self, line: bytes) -> None:
        now = time.perf_counter()
        self.peer.turnaround.append(now - self.sent)
        if self.ami_chunks:
            self.ami(self.ami_chunks.pop(0))
        if line.startswith(b"GET FULL VARIABLE"):
            exprs = line.decode().split('"')[1].split("|")
            out = []
            for expr in exprs:
                if expr.startswith("${BASE64_ENCODE("):
                    name = expr[len("${BASE64_ENCODE(${") : -3]
                    out.append(base64.b64encode(self.answers.get(name, "").encode()).decode())
                else:
                    out.append(expr)  # the cc-sync nonce comes back as it is
            self.write(f"200 result=1 ({'|'.join(out)})\n".encode())
        elif line.startswith(b"STREAM FILE") and b"/consent" in line:
            self.digit_sent = -1.0  # the caller listens, then presses 1
            asyncio.get_running_loop().call_later(self.peer.prompt_s, self.press_1)
        elif line.startswith((b"STREAM FILE", b"CONTROL STREAM FILE", b"GET OPTION")):
            self.write(b"200 result=0 endpos=8000\n")
        elif line.startswith(b"EXEC MixMonitor") or line.startswith(b'EXEC "MixMonitor"'):
            if self.digit_sent > 0:
                self.peer.digit_to_record.append(now - self.digit_sent)
            args = line.decode().split(" ", 2)[2].strip('"')
            path = Path(args.split(",")[0])
            path.write_bytes(self.peer.wav)  # closed at hangup: final at once here
            self.recording = path
            self.answers["MIXMONITOR(${MIXMON_ID},filename)"] = str(path)
            self.write(b"200 result=0\n")
        elif line.startswith((b"SET VARIABLE", b"NOOP", b"ANSWER", b"VERBOSE", b"EXEC")):
            self.write(b"200 result=1\n" if not line.startswith(b"EXEC") else b"200 result=0\n")
        elif line.startswith(b"CHANNEL STATUS"):
            self.write(b"200 result=6\n")
        else:
            print(f"asterisk peer: unexpected command {line[:80]!r}", file=sys.stderr)
            self.write(b"510 Invalid or unknown command\n")

    def press_1(self) -> None:
        self.write(b"200 result=49 endpos=9600\n")
        self.digit_sent = self.sent

    def write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
            self.sent = time.perf_counter()

    def hang_up(self) -> None:
        """The rest of the call's AMI events: chunks of AGI commands it did not send (the
        capture's call ran more of them), then the hangups (its customer leg's ``Hangup``
        ends the call in the daemon)."""
        for chunk in self.ami_chunks:
            self.ami(chunk)
        self.ami_chunks = []
        self.ami(self.peer.events.after)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
