"""Every captured FastAGI connection, replayed byte for byte against our server over a real
socket. The server runs the capture's own commands through :class:`agi.session.AgiSession`;
each reply must pair with its command (``HANGUP`` is never taken for a reply), ``511`` and EOF
must end the channel, and the environment must be read as the capture says.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from asterisk_captures import AgiConnection, fixtures, parse_agi_capture, replay

from agi import protocol as p
from agi.server import FastAgiServer
from agi.session import AgiSession, ChannelGone

CONNECTIONS = [
    conn
    for path in fixtures("asterisk/agi-*.log") + fixtures("asterisk-bridge/agi-*.log")
    for conn in parse_agi_capture(path)
]


@dataclass
class Expected:
    line: bytes | None  # the reply line (or the 520 closing line), None: no reply came
    hangup: bool = False  # a HANGUP line came with it
    stray: bool = False  # caller data split the reply: the session must give up


def expectations(conn: AgiConnection) -> list[Expected]:
    """What Asterisk answered to each command, read straight from the capture."""
    out: list[Expected] = []
    current: Expected | None = None
    in_usage = False
    for e in conn.after_environment:
        if e.kind == "EOF":
            break  # Asterisk closed the socket: nothing after this reaches it
        if e.kind == "TX":
            current = Expected(None)
            out.append(current)
            continue
        if e.kind != "RX" or current is None:
            continue
        body = e.data.rstrip(b"\n")
        if body == b"HANGUP":
            current.hangup = True
        elif body.startswith(b"520-"):
            in_usage = True
        elif in_usage:
            if body.startswith(b"520 "):
                current.line, in_usage = body, False
        elif current.line is None and p.parse_reply_line(body) is not None:
            current.line = body
        elif current is out[0] and current.line is None:
            pass  # the rest of an environment cut short: discarded by the sync
        else:
            current.stray = True
    return out


@dataclass
class Run:
    outcomes: list[object] = field(default_factory=list)
    session: AgiSession | None = None


async def run_capture(conn: AgiConnection, *, close_on_hangup: bool = False) -> tuple[Run, object]:
    run = Run()
    tx = conn.tx_lines

    async def handler(session: AgiSession) -> None:
        run.session = session
        for line in tx:
            try:
                run.outcomes.append(await session.command(line, wait_s=5))
            except ChannelGone as exc:
                run.outcomes.append(exc)
                if session.closed:
                    return

    server = FastAgiServer(lambda env: handler, port=0, close_on_hangup=close_on_hangup)
    await server.start()
    try:
        result = await replay(conn, "127.0.0.1", server.port)
        await asyncio.sleep(0)
    finally:
        await server.stop(grace=2)
    return run, result


@pytest.mark.parametrize("conn", CONNECTIONS, ids=[c.name for c in CONNECTIONS])
def test_capture_replays_byte_for_byte(conn: AgiConnection) -> None:
    run, result = asyncio.run(run_capture(conn))
    assert result.mismatches == []
    assert result.sync_replies == (1 if conn.tx_lines else 0)  # before the first command
    session = run.session
    assert session is not None
    trusted = {}
    for line in conn.environment[:-1]:
        key, _, value = line.decode().rstrip("\n").partition(": ")
        if key == "agi_callerid":
            break
        trusted.setdefault(key, value)
    assert session.env.trusted == trusted  # first occurrence wins, caller part kept apart
    expected = expectations(conn)
    for i, (exp, got) in enumerate(zip(expected, run.outcomes, strict=False)):
        if exp.stray:
            # caller data split the reply: the session noticed and gave up, never mis-paired
            assert session.closed
            assert all(isinstance(o, ChannelGone) for o in run.outcomes[i + 1 :])
            assert len(run.outcomes) <= i + 2
            return
        if exp.line is None or exp.line.startswith(b"511"):
            assert isinstance(got, ChannelGone), f"command {i}: {got!r}"
            continue
        assert isinstance(got, p.Reply), f"command {i} {conn.tx_lines[i]!r}: {got!r}"
        assert got.code == int(exp.line[:3]), f"command {i}: {got!r} vs {exp.line!r}"
        if got.code == p.USAGE:
            assert got.usage.startswith("Invalid command syntax")
            assert "Waits up to" in got.usage
        else:
            assert got.text == exp.line[4:].decode(), f"command {i}"
    assert len(run.outcomes) == len(expected)
    ended = any(e.hangup or (e.line or b"").startswith(b"511") for e in expected)
    assert session.hung_up == ended
