"""The real Asterisk 22 captures (``tests/fixtures/asterisk*/``, gzipped copies of
``../shared/pbx-transcripts/asterisk*/``), parsed, and a replayer that plays one captured
FastAGI connection back to a server over a real socket, byte for byte.

Two capture formats:

* ``asterisk/agi-*.log``: ``<t> RX|TX b'<line>'  (note)``, one session per file;
* ``asterisk-bridge/agi-*.log``: ``<t> #<conn> RX|TX b'<line>'``, several sessions per file;
* AMI: ``asterisk-bridge/ami-*.log``: ``<t> <user> RX|TX b'<whole message>'``;
  ``asterisk/ami-*.log``: ``<t> >>>|<<< Key: Value | Key: Value`` (headers joined by `` | ``).
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHARED = Path("/work/shared/pbx-transcripts")

_AGI_LINE = re.compile(
    r"^\s*(?P<t>\d+\.\d+)\s+(?:#(?P<conn>\d+)\s+)?(?P<kind>RX|TX|CLOSE-ERR|CLOSE|EOF|CONNECT|NOTE)"
    r"\b\s?(?P<rest>.*)$"
)
_BYTES = re.compile(r"""^(b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")""")
_AMI_BRIDGE = re.compile(r"^\s*(?P<t>\d+\.\d+)\s+(?P<user>\w+)\s+(?P<dir>RX|TX)\s+(?P<b>b['\"].*)$")
_AMI_OLD = re.compile(r"^\s*(?P<t>\d+\.\d+)\s+(?P<dir>>>>|<<<|BANNER)\s+(?P<rest>.*)$")


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()


def fixture(name: str) -> Path:
    """A capture by its original name, e.g. ``asterisk/agi-decline-1795345576.9.log``."""
    return FIXTURES / (name + ".gz")


def fixtures(pattern: str) -> list[Path]:
    return sorted(FIXTURES.glob(pattern + ".gz"))


@dataclass(frozen=True)
class Entry:
    t: float
    kind: str  # RX, TX, CLOSE, EOF, CONNECT, NOTE, CLOSE-ERR
    data: bytes = b""
    note: str = ""


@dataclass
class AgiConnection:
    """One captured FastAGI connection: the environment, then everything after it."""

    name: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def environment(self) -> list[bytes]:
        """RX lines up to and including the first blank line."""
        out: list[bytes] = []
        for e in self.entries:
            if e.kind == "RX":
                out.append(e.data)
                if e.data == b"\n":
                    break
        return out

    @property
    def after_environment(self) -> list[Entry]:
        seen = 0
        env = len(self.environment)
        for i, e in enumerate(self.entries):
            if e.kind == "RX":
                seen += 1
                if seen == env:
                    return self.entries[i + 1 :]
        return []

    @property
    def tx_lines(self) -> list[bytes]:
        return [e.data for e in self.entries if e.kind == "TX"]

    @property
    def rx_lines(self) -> list[bytes]:
        return [e.data for e in self.entries if e.kind == "RX"]


def parse_agi_capture(path: Path) -> list[AgiConnection]:
    conns: dict[str, AgiConnection] = {}
    for raw in read_text(path).splitlines():
        m = _AGI_LINE.match(raw)
        if m is None:
            continue
        conn = m["conn"] or "1"
        kind, rest = m["kind"], m["rest"]
        if kind == "NOTE":
            continue  # the capture driver's comments
        data, note = b"", rest
        if kind in ("RX", "TX"):
            b = _BYTES.match(rest)
            assert b is not None, raw
            data, note = ast.literal_eval(b.group(1)), rest[b.end() :].strip()
        name = f"{path.name.removesuffix('.gz')}#{conn}"
        conns.setdefault(conn, AgiConnection(name)).entries.append(
            Entry(float(m["t"]), kind, data, note)
        )
    return list(conns.values())


@dataclass(frozen=True)
class AmiMessage:
    t: float
    user: str
    direction: str  # RX (Asterisk -> client) or TX
    raw: bytes

    @property
    def headers(self) -> list[tuple[str, str]]:
        text = self.raw.decode("utf-8", "replace")
        out = []
        for line in text.split("\r\n"):
            key, sep, value = line.partition(": ")
            if sep:
                out.append((key, value))
        return out

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == key.lower()), None)


def parse_ami_capture(path: Path) -> list[AmiMessage]:
    """Every AMI message of a capture with its exact bytes (the old format is rebuilt from
    its ``Key: Value | Key: Value`` lines, which is how Asterisk framed them)."""
    out: list[AmiMessage] = []
    for raw in read_text(path).splitlines():
        m = _AMI_BRIDGE.match(raw)
        if m is not None:
            out.append(AmiMessage(float(m["t"]), m["user"], m["dir"], ast.literal_eval(m["b"])))
            continue
        m = _AMI_OLD.match(raw)
        if m is None:
            continue
        if m["dir"] == "BANNER":
            out.append(AmiMessage(float(m["t"]), "test", "RX", ast.literal_eval(m["rest"])))
            continue
        body = "\r\n".join(m["rest"].split(" | ")) + "\r\n\r\n"
        direction = "TX" if m["dir"] == ">>>" else "RX"
        out.append(AmiMessage(float(m["t"]), "test", direction, body.encode()))
    return out


#: what Asterisk sends a session at its login, not for a call
LOGIN_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth"})


def call_events(name: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(event, class, headers less Event, Privilege and Timestamp) of each event of a one-call
    AMI capture, in order, the login's left out."""
    out = []
    for m in parse_ami_capture(fixture(name)):
        event = m.get("Event")
        if m.direction != "RX" or not event or event in LOGIN_EVENTS:
            continue
        rest = [(k, v) for k, v in m.headers if k not in ("Event", "Privilege", "Timestamp")]
        out.append((event, str(m.get("Privilege")).split(",")[0], rest))
    return out


def summaries(name: str) -> Iterator[dict]:
    """The JSON lines of ``asterisk/agi-summary.jsonl`` or ``ami-summary.jsonl``."""
    for line in read_text(fixture(name)).splitlines():
        if line.strip():
            yield json.loads(line)


def bridge_summary(scenario: str) -> dict:
    return json.loads(read_text(fixture(f"asterisk-bridge/summary-{scenario}.json")))


# -- replay ---------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    received: list[bytes] = field(default_factory=list)  # what the server sent us, in order
    mismatches: list[tuple[bytes, bytes]] = field(default_factory=list)  # (expected, got)
    closed_by_server_after: int | None = None  # number of TX lines seen when it closed
    sync_replies: int = 0


async def replay(
    conn: AgiConnection, host: str, port: int, *, answer_sync: bool = True
) -> ReplayResult:
    """Play ``conn`` to a FastAGI server as Asterisk did: RX lines in capture order; at each
    TX line, read the server's next line and compare it byte for byte. Our session's
    re-synchronisation command (``GET FULL VARIABLE "cc-sync-…"``) is answered as Asterisk
    would, after the lines Asterisk had already sent (the rest of a cut-short environment)."""
    reader, writer = await asyncio.open_connection(host, port)
    result = ReplayResult()
    rx_pending: list[bytes] = []
    entries = list(conn.entries)
    i = 0
    try:
        while i < len(entries):
            e = entries[i]
            if e.kind == "RX":
                rx_pending.append(e.data)
                i += 1
                continue
            if rx_pending:
                writer.write(b"".join(rx_pending))
                await writer.drain()
                rx_pending = []
            if e.kind == "EOF":  # Asterisk closed the connection here
                writer.close()
                result.closed_by_server_after = None
                return result
            if e.kind != "TX":
                i += 1
                continue
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                result.closed_by_server_after = len(result.received)
                return result
            if answer_sync and line.startswith(b'GET FULL VARIABLE "cc-sync-'):
                nonce = line.split(b'"')[1]
                block = _rx_block(entries, i + 1)
                # what Asterisk had sent before it read our command: all but the reply itself
                early = [b.data for b in block[:-1]] if len(block) > 1 else []
                writer.write(b"".join(early) + b"200 result=1 (" + nonce + b")\n")
                await writer.drain()
                del entries[i + 1 : i + 1 + len(early)]
                result.sync_replies += 1
                continue
            result.received.append(line)
            if line != e.data:
                result.mismatches.append((e.data, line))
            i += 1
        if rx_pending:
            writer.write(b"".join(rx_pending))
            await writer.drain()
        # after the capture's end: the server should close (it may still re-synchronise)
        while line := await asyncio.wait_for(reader.readline(), 10):
            if answer_sync and line.startswith(b'GET FULL VARIABLE "cc-sync-'):
                writer.write(b"200 result=1 (" + line.split(b'"')[1] + b")\n")
                result.sync_replies += 1
            else:
                result.received.append(line)
        result.closed_by_server_after = len(result.received)
    finally:
        writer.close()
    return result


def _rx_block(entries: list[Entry], start: int) -> list[Entry]:
    block = []
    for e in entries[start:]:
        if e.kind != "RX":
            break
        block.append(e)
    return block


# -- AMI replay -------------------------------------------------------------------------------


class AmiReplayServer:
    """Plays a captured AMI stream to one client: the banner, a login answer, then every
    captured event message byte for byte. Actions the client sends are answered with the
    captured response to the same action and headers, if there is one."""

    def __init__(self, events: list[bytes], responses: dict[tuple, bytes] | None = None) -> None:
        self.events = events
        self.responses = responses or {}
        self.port = 0
        self.actions: list[dict[str, str]] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in raw.decode().split("\r\n") if ": " in line
                )
                self.actions.append(headers)
                aid = headers.get("ActionID", "")
                action = headers.get("Action", "")
                if action == "Login":
                    writer.write(
                        f"Response: Success\r\nActionID: {aid}\r\n"
                        "Message: Authentication accepted\r\n\r\n".encode()
                    )
                    writer.write(b"".join(self.events))
                elif action == "Logoff":
                    writer.write(f"Response: Goodbye\r\nActionID: {aid}\r\n\r\n".encode())
                else:
                    key = action_key(headers)
                    reply = self.responses.get(key) or next(
                        (r for k, r in self.responses.items() if ("action", action) in k),
                        b"Response: Success\r\nActionID: X\r\n\r\n",
                    )
                    writer.write(re.sub(rb"ActionID: [^\r]*", f"ActionID: {aid}".encode(), reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def action_key(headers: dict[str, str]) -> tuple:
    skip = {"actionid", "events", "secret", "username"}
    return tuple(sorted((k.lower(), v) for k, v in headers.items() if k.lower() not in skip))


def captured_actions(messages: list[AmiMessage]) -> list[tuple[dict[str, str], AmiMessage]]:
    """Every captured action with its response (matched by user and ActionID)."""
    out = []
    for tx in (m for m in messages if m.direction == "TX"):
        aid = tx.get("ActionID")
        rx = next(
            (
                m
                for m in messages
                if m.direction == "RX"
                and m.user == tx.user
                and m.get("Response")
                and m.get("ActionID") == aid
            ),
            None,
        )
        if rx is not None:
            out.append((dict(tx.headers), rx))
    return out
