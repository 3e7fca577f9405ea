"""The FastAGI client side of the simulated Asterisk: connects to a FastAGI server as
``res_agi`` does, sends the environment in Asterisk 22's exact format, and answers commands
with the reply lines the captures show, including every hangup form:

* a hangup during ``STREAM FILE``: ``200 result=-1 endpos=<n>`` then ``HANGUP`` right after,
  whatever the next command is (``hangup_during_prompt``);
* a hangup while idle: ``HANGUP`` at once (``accept_brief``);
* afterwards ``GET``/``SET VARIABLE``, ``VERBOSE``, ``EXEC`` still work; media commands get
  ``511`` (the ``dead`` column of res_agi's command table);
* the channel, and its recordings, stay until the server closes the socket (``linger``);
* ``AGISIGHUP=no``: no ``HANGUP`` line (``no_sighup``); ``AGIEXITONHANGUP=yes``: two
  ``HANGUP`` lines and EOF (``exit_on_hangup``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asterisk_sim import SimChannel

DEAD = b"511 Command Not Permitted on a dead channel or intercept routine\n"
INVALID = b"510 Invalid or unknown command\n"
USAGE_WAIT_FOR_DIGIT = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b"Waits up to <replaceable>timeout</replaceable> milliseconds for channel to receive a DTMF "
    b"digit. Returns <literal>-1</literal> on channel failure, <literal>0</literal> if no digit "
    b"is received in the timeout, or the numerical value of the ascii of the digit if one is "
    b"received. Use <literal>-1</literal> for the <replaceable>timeout</replaceable> value if "
    b"you desire the call to block indefinitely.\n"
    b"520 End of proper usage.\n"
)
# commands res_agi allows on a dead channel (its table's last column)
DEAD_OK = {"GET VARIABLE", "GET FULL VARIABLE", "SET VARIABLE", "VERBOSE", "EXEC", "NOOP"}
SAMPLES_PER_S = 8000


def parse_args(line: str) -> list[str]:
    """Asterisk's ``parse_args``: whitespace separates, ``"…"`` groups, ``\\`` escapes."""
    args: list[str] = []
    cur: list[str] = []
    quoted = escaped = started = False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch == '"':
            quoted = not quoted
            started = True
        elif ch in " \t" and not quoted:
            if started:
                args.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        args.append("".join(cur))
    return args


def environment(chan: SimChannel, url: str, script: str, args: tuple[str, ...]) -> bytes:
    """Exactly the keys, order and formatting of the captured environments."""
    lines = [
        ("agi_network", "yes"),
        ("agi_network_script", script),
        ("agi_request", url),
        ("agi_channel", chan.name),
        ("agi_language", chan.language),
        ("agi_type", chan.name.split("/", 1)[0]),
        ("agi_uniqueid", chan.uid),
        ("agi_version", "22.11.0-rc1"),
        ("agi_callerid", chan.callerid_num or "unknown"),
        ("agi_calleridname", chan.callerid_name or "unknown"),
        ("agi_callingpres", "32" if chan.pres.startswith("prohib") else "0"),
        ("agi_callingani2", "0"),
        ("agi_callington", "0"),
        ("agi_callingtns", "0"),
        ("agi_dnid", "unknown"),
        ("agi_rdnis", "unknown"),
        ("agi_context", chan.context),
        ("agi_extension", chan.exten),
        ("agi_priority", "1"),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""),
        ("agi_threadid", "139791894668992"),
        *((f"agi_arg_{i}", a) for i, a in enumerate(args, 1)),
    ]
    return "".join(f"{k}: {v}\n" for k, v in lines).encode() + b"\n"


def prompt_duration(file: Path) -> float | None:
    """Seconds of 8 kHz 16-bit audio in a WAV; None if Asterisk could not open it."""
    if not file.is_file():
        return None
    return max(file.stat().st_size - 44, 0) / (2 * SAMPLES_PER_S)


class AgiCall:
    """One AGI application run on a channel: ``AGI(agi://host:port/script[,args])``."""

    def __init__(self, chan: SimChannel, url: str, args: tuple[str, ...] = ()) -> None:
        self.chan = chan
        self.sim = chan.sim
        self.url = url
        self.args = args
        m = re.match(r"^agi://([^/:]+):(\d+)(?:/(.*))?$", url)
        assert m is not None, url
        self.host, self.port, self.script = m.group(1), int(m.group(2)), m.group(3) or ""
        self.dead = False
        self.hangup_sent = False
        self.commands: list[str] = []
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> str:
        """Returns AGISTATUS: FAILURE (no server), SUCCESS, or HANGUP."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "FAILURE"
        self.writer = writer
        self.chan.agi = self
        try:
            self._send(environment(self.chan, self.url, self.script, self.args))
            while True:
                line = await self._next_command(reader)
                if line is None:
                    break
                self._send(await self._execute(line))
                if not self.chan.alive:
                    self._notify_hangup()
                await writer.drain()
                if self.chan.alive is False and self.sim.agi_exit_on_hangup:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.chan.agi = None
        return "SUCCESS" if self.chan.alive else "HANGUP"

    def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.sim.agi_sent.append(data)
        self.writer.write(data)

    async def _next_command(self, reader: asyncio.StreamReader) -> str | None:
        """The next command line; meanwhile a hangup sends HANGUP (the channel is idle)."""
        read = asyncio.ensure_future(reader.readline())
        while True:
            if not self.chan.alive:
                self._notify_hangup()
                if self.sim.agi_exit_on_hangup:
                    read.cancel()
                    return None
                gone = None
            else:
                gone = asyncio.ensure_future(self.chan.gone.wait())
            done, _ = await asyncio.wait(
                {read} | ({gone} if gone else set()), return_when=asyncio.FIRST_COMPLETED
            )
            if gone is not None and not gone.done():
                gone.cancel()
            if read in done:
                data = read.result()
                return data.decode().rstrip("\n") if data.endswith(b"\n") else None

    def _notify_hangup(self) -> None:
        self.dead = True
        if self.hangup_sent or not self.sim.agi_sighup or self.writer is None:
            return
        self.hangup_sent = True
        self._send(b"HANGUP\n")
        if self.sim.agi_exit_on_hangup:
            self._send(b"HANGUP\n")

    async def _execute(self, line: str) -> bytes:
        self.commands.append(line)
        argv = parse_args(line)
        words = [a.upper() for a in argv[:3]]
        name = next(
            (
                n
                for n in (
                    "GET FULL VARIABLE",
                    "GET VARIABLE",
                    "SET VARIABLE",
                    "STREAM FILE",
                    "WAIT FOR DIGIT",
                    "CHANNEL STATUS",
                )
                if words[: len(n.split())] == n.split()
            ),
            words[0] if words else "",
        )
        rest = argv[len(name.split()) :]
        if self.dead and name not in DEAD_OK:
            return DEAD
        chan = self.chan
        if name == "GET VARIABLE" and rest:
            value = chan.get_var(rest[0])
            return b"200 result=0\n" if value is None else f"200 result=1 ({value})\n".encode()
        if name == "GET FULL VARIABLE" and rest:
            target = chan if len(rest) < 2 else self.sim.find_channel(rest[1])
            if target is None:
                return b"200 result=0\n"
            return f"200 result=1 ({target.evaluate(rest[0])})\n".encode()
        if name == "SET VARIABLE" and len(rest) >= 2:
            chan.set_var(rest[0], rest[1])
            return b"200 result=1\n"
        if name == "VERBOSE":
            return b"200 result=1\n"
        if name == "ANSWER":
            chan.state = "Up"
            return b"200 result=0\n"
        if name == "CHANNEL STATUS":
            return b"200 result=6\n" if chan.state == "Up" else b"200 result=4\n"
        if name == "EXEC" and rest:
            return self._exec(rest[0], rest[1] if len(rest) > 1 else "")
        if name == "STREAM FILE" and len(rest) >= 2:
            return await self._stream_file(rest[0], rest[1])
        if name == "WAIT FOR DIGIT":
            if not rest:
                return USAGE_WAIT_FOR_DIGIT
            return await self._wait_for_digit(int(rest[0]))
        return INVALID

    def _exec(self, app: str, data: str) -> bytes:
        chan = self.chan
        self.sim.exec_log.append((chan.name, app, data))
        if app.lower() == "mixmonitor":
            path, _, options = data.partition(",")
            chan.start_mixmonitor(path, options)
            return b"200 result=0\n"
        if app.lower() == "stopmixmonitor":
            chan.stop_mixmonitor(data or None)  # on another leg's ID: answers 0, does nothing
            return b"200 result=0\n"
        return b"200 result=-2\n"

    async def _stream_file(self, path: str, escape: str) -> bytes:
        duration = prompt_duration(Path(path + ".wav"))
        if duration is None:
            return b"200 result=-1 endpos=0\n"
        prompt = Path(path).name
        self.chan.heard_paths.append(path)
        self.chan.heard.append(prompt)
        act = self.chan.next_act(prompt)
        at = duration
        if act is not None and act.at < duration:
            at = act.at
        ended = await self.chan.sleep(at)
        endpos = int(min(ended, at) * SAMPLES_PER_S)
        if not self.chan.alive:
            return f"200 result=-1 endpos={endpos}\n".encode()
        if act is not None and at < duration:
            self.chan.take_act()
            if act.what == "hangup":
                self.sim.hangup(self.chan)
                return f"200 result=-1 endpos={endpos}\n".encode()
            if act.digit in escape:
                return f"200 result={ord(act.digit)} endpos={endpos}\n".encode()
            # a key that is no escape digit does not stop the prompt
            await self.chan.sleep(duration - at)
            endpos = int(duration * SAMPLES_PER_S)
        return f"200 result=0 endpos={endpos}\n".encode()

    async def _wait_for_digit(self, timeout_ms: int) -> bytes:
        act = self.chan.next_act("wait")
        limit = timeout_ms / 1000
        at = act.at if act is not None and act.at <= limit else limit
        await self.chan.sleep(at)
        if not self.chan.alive:
            return b"200 result=-1\n"
        if act is not None and act.at <= limit:
            self.chan.take_act()
            if act.what == "hangup":
                self.sim.hangup(self.chan)
                return b"200 result=-1\n"
            return f"200 result={ord(act.digit)}\n".encode()
        return b"200 result=0\n"
