"""Our FastAGI server and session at their edges: limits, early EOF, timeouts, prompt close
after hangup, and the injection cases of capture ``s7_injection``."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import pytest
from asterisk_captures import fixture, fixtures, parse_agi_capture, replay

from agi import protocol as p
from agi.server import FastAgiServer, ServerLimits
from agi.session import AgiSession, ChannelGone, CommandTimeout

ENV = parse_agi_capture(fixture("asterisk/agi-decline-1795345576.9.log"))[0].environment
S7 = parse_agi_capture(fixture("asterisk-bridge/agi-s7_injection.log"))


async def started(handler, **kw) -> FastAgiServer:  # type: ignore[no-untyped-def]
    server = FastAgiServer(lambda env: handler, port=0, **kw)
    await server.start()
    return server


async def talk(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def answer_sync(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    assert line.startswith(b'GET FULL VARIABLE "cc-sync-')
    writer.write(b"200 result=1 (" + line.split(b'"')[1] + b")\n")


def test_eof_in_the_middle_of_the_environment_ends_only_that_session() -> None:
    seen: list[str] = []

    async def handler(session: AgiSession) -> None:
        seen.append(session.env.uniqueid)

    async def scenario() -> None:
        server = await started(handler)
        try:
            _, w = await talk(server.port, b"".join(ENV[:5]))
            w.close()  # gone before the blank line (panoramisk spins forever here)
            r, w = await talk(server.port, b"".join(ENV))
            assert await asyncio.wait_for(r.read(), 5) == b""  # handled (no command) and closed
            w.close()
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert seen == ["1795345576.9"]


@pytest.mark.parametrize(
    ("data", "limits"),
    [
        (b"agi_network: yes\n" * 200, ServerLimits()),  # too many lines
        ((b"agi_x: " + b"y" * 200 + b"\n") * 100 + b"\n", ServerLimits()),  # 20 kB > 16 kB
        (b"agi_x: " + b"y" * 70000 + b"\n\n", ServerLimits()),  # one absurd line
        (b"agi_network: yes\n", ServerLimits(env_timeout_s=0.2)),  # never finishes
    ],
    ids=["lines", "bytes", "long-line", "timeout"],
)
def test_a_bad_environment_is_refused_without_running_a_handler(
    data: bytes, limits: ServerLimits
) -> None:
    ran: list[bool] = []

    async def handler(session: AgiSession) -> None:
        ran.append(True)

    async def scenario() -> bytes:
        server = await started(handler, limits=limits)
        try:
            r, w = await talk(server.port, data)
            out = await asyncio.wait_for(r.read(), 5)
            w.close()
            return out
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == b""
    assert ran == []


def test_an_environment_arriving_a_byte_at_a_time_is_read_whole() -> None:
    got: list[object] = []

    async def handler(session: AgiSession) -> None:
        got.append(session.env.trusted)
        got.append(await session.value("${CHANNEL(state)}"))

    async def scenario() -> None:
        server = await started(handler)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for byte in b"".join(ENV):
                writer.write(bytes([byte]))
                await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
            nonce, expr = line.split(b'"')[1].split(b"|")
            assert expr == b"${BASE64_ENCODE(${CHANNEL(state)})}"
            for byte in b"200 result=1 (" + nonce + b"|" + base64.b64encode(b"Up") + b")\n":
                writer.write(bytes([byte]))
                await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # done, closed
            writer.close()
        finally:
            await server.stop()

    asyncio.run(scenario())
    trusted, state = got
    assert trusted == p.parse_environment(ENV[:-1]).trusted
    assert trusted["agi_uniqueid"] == "1795345576.9" and state == "Up"


def test_sessions_beyond_the_limit_are_closed_at_once() -> None:
    release = asyncio.Event()

    async def handler(session: AgiSession) -> None:
        await release.wait()

    async def scenario() -> None:
        server = await started(handler, limits=ServerLimits(max_sessions=1))
        try:
            r1, w1 = await talk(server.port, b"".join(ENV))
            await asyncio.sleep(0.05)
            r2, w2 = await talk(server.port, b"".join(ENV))
            # refused: Asterisk then reports AGISTATUS=SUCCESS with nothing set (a reset,
            # since its environment was never read, is a close too)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(r2.read(), 5) == b""
            assert server.refused == 1
            release.set()
            assert await asyncio.wait_for(r1.read(), 5) == b""
            w1.close()
            w2.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_command_without_reply_times_out_and_closes_the_session() -> None:
    outcome: list[object] = []

    async def handler(session: AgiSession) -> None:
        try:
            await session.command(b"ANSWER\n", wait_s=0.2)
        except CommandTimeout as exc:
            outcome.append(exc)
        assert session.closed
        with pytest.raises(ChannelGone):
            await session.command(b"ANSWER\n")

    async def scenario() -> None:
        server = await started(handler)
        try:
            r, w = await talk(server.port, b"".join(ENV))
            await answer_sync(r, w)
            assert await r.readline() == b"ANSWER\n"
            assert await asyncio.wait_for(r.read(), 5) == b""  # closed, nothing else sent
            w.close()
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert len(outcome) == 1


def test_hangup_closes_the_socket_at_once_so_asterisk_can_close_the_recording() -> None:
    """linger_after_hangup: Asterisk keeps the channel while we keep the socket. By default
    our session closes it on HANGUP and sends nothing after it."""
    conn = parse_agi_capture(fixture("asterisk/agi-linger_after_hangup-1795345730.25.log"))[0]
    tx = conn.tx_lines
    gone: list[int] = []

    async def handler(session: AgiSession) -> None:
        for i, line in enumerate(tx):
            try:
                await session.command(line)
            except ChannelGone:
                gone.append(i)
                return

    async def scenario() -> list[bytes]:
        server = await started(handler)  # close_on_hangup=True, the default
        try:
            result = await replay(conn, "127.0.0.1", server.port)
        finally:
            await server.stop()
        return result.received

    received = asyncio.run(scenario())
    hangup_at = tx.index(b'VERBOSE "still here after hangup" 1\n')
    assert received == tx[:hangup_at]  # nothing was sent after HANGUP
    assert gone == [hangup_at]


def test_injected_environment_lines_never_override_trusted_keys() -> None:
    nl1 = S7[4]  # agi_calleridname "Eve\nagi_network_script: injected"
    env = p.parse_environment(nl1.environment[:-1])
    assert env.script == "consent"
    assert env.hostile
    assert any("agi_network_script" in a for a in env.anomalies)
    assert ("agi_network_script", "injected") in env.untrusted


def _edited(old: bytes, new: bytes | None) -> list[bytes]:
    """The captured environment (without its blank line) with one line replaced or removed,
    or with ``new`` added at the end when ``old`` is empty."""
    lines = list(ENV[:-1])
    if not old:
        return [*lines, new] if new is not None else lines
    i = next(n for n, line in enumerate(lines) if line.startswith(old))
    return lines[:i] + ([new] if new is not None else []) + lines[i + 1 :]


@pytest.mark.parametrize(
    ("lines", "anomaly"),
    [
        (_edited(b"agi_type:", b"agi_type\n"), "line without 'key: value'"),
        (_edited(b"agi_type:", b"agi_injected: 1\n"), "unexpected key 'agi_injected' before"),
        (_edited(b"agi_type:", b"agi_channel: SIP/evil\n"), "repeated key 'agi_channel'"),
        (_edited(b"agi_uniqueid:", None), "missing key 'agi_uniqueid'"),
        (_edited(b"agi_dnid:", b"agi_network_script: evil\n"), "key 'agi_network_script' after"),
        (_edited(b"agi_dnid:", b"agi_calleridname: again\n"), "key 'agi_calleridname' after"),
        (_edited(b"agi_dnid:", b"just text\n"), "line without 'key: value'"),
        (_edited(b"agi_threadid:", None), "ended before agi_threadid"),
    ],
    ids=["no-separator", "unknown-key", "repeated", "missing", "injected-after", "repeated-after",
         "no-separator-after", "cut-short"],
)  # fmt: skip
def test_every_environment_anomaly_is_noted_and_trusted_keys_stay_first_seen(
    lines: list[bytes], anomaly: str
) -> None:
    clean = p.parse_environment(ENV[:-1])
    env = p.parse_environment(lines)
    assert env.hostile and any(anomaly in a for a in env.anomalies), env.anomalies
    for key, value in env.trusted.items():  # nothing a later line says replaces a value
        if key != "agi_type":  # the line some cases edit
            assert clean.trusted.get(key, value) == value


def test_a_clean_environment_has_no_anomalies_and_keeps_the_callers_part_in_order() -> None:
    env = p.parse_environment([*ENV[:-1], b"agi_arg_1: sales\n"])
    assert not env.hostile, env.anomalies
    caller = [line.decode().rstrip("\n") for line in ENV[:-1]]
    caller = caller[next(i for i, t in enumerate(caller) if t.startswith("agi_callerid:")) :]
    assert env.untrusted == [(*t.split(": ", 1),) for t in caller] + [("agi_arg_1", "sales")]
    assert env.untrusted[0][0] == "agi_callerid" and "agi_callerid" not in env.trusted


def test_an_environment_cut_short_is_resynchronised_before_the_first_reply() -> None:
    """nl2: "Eve\\n\\nagi_fake: 1" ends the environment early; the real rest of it arrives
    after the blank line. The sync discards it; the first reply is the real one."""
    nl2 = S7[5]
    got: list[object] = []

    async def handler(session: AgiSession) -> None:
        got.append(session.env.hostile)
        got.append(await session.command(nl2.tx_lines[0]))
        got.append(session.stray_lines)

    async def scenario() -> None:
        server = await started(handler)
        try:
            await replay(nl2, "127.0.0.1", server.port)
        finally:
            await server.stop()

    asyncio.run(scenario())
    hostile, reply, stray = got
    assert hostile is True
    assert isinstance(reply, p.Reply) and reply.data == "5551234"
    assert stray == 15  # 14 environment lines and the blank line


def test_values_are_read_base64_encoded_so_caller_data_cannot_split_a_reply() -> None:
    line = p.values_command(("${CHANNEL(linkedid)}", "${CALLERID(num)}"))
    assert line == (
        b'GET FULL VARIABLE "${BASE64_ENCODE(${CHANNEL(linkedid)})}|'
        b'${BASE64_ENCODE(${CALLERID(num)})}"\n'
    )
    evil = "Eve\n200 result=1 (fake)"
    data = "|".join(base64.b64encode(v.encode()).decode() for v in ("1795348625.74", evil))
    reply = p.parse_reply_line(f"200 result=1 ({data})".encode())
    assert reply is not None
    assert p.decode_values(reply, 2) == ["1795348625.74", evil]
    assert p.decode_values(p.Reply(200, "result=0", 0), 2) is None  # no such channel


def test_arguments_are_quoted_and_line_breaks_refused() -> None:
    # the quoting the s7 capture proved: SET VARIABLE QUOTED "a \"quoted\" back\\slash"
    assert p.set_variable_command("QUOTED", 'a "quoted" back\\slash') == (
        b'SET VARIABLE "QUOTED" "a \\"quoted\\" back\\\\slash"\n'
    )
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(p.UnsafeArgument):
            p.set_variable_command("X", bad)
    with pytest.raises(p.UnsafeArgument):
        p.set_variable_command("X Y", "v")
    assert p.exec_command("MixMonitor", "/spool/0b0e.wav", "Di(MIXMON_ID)") == (
        b'EXEC "MixMonitor" "/spool/0b0e.wav,Di(MIXMON_ID)"\n'
    )
    for bad in ("/spool/x y.wav", "/spool/$(x).wav", '/spool/a"b.wav', "/spool/${CALLERID(num)}"):
        with pytest.raises(p.UnsafeArgument):
            p.exec_command("MixMonitor", bad)
    with pytest.raises(p.UnsafeArgument):
        p.stream_file_command("/prompts/en/consent", "12;")


def test_reply_forms_of_every_capture_parse() -> None:
    """Every reply line Asterisk sent in the captures parses, with its fields."""
    forms: dict[str, p.Reply] = {}
    for path in fixtures("asterisk*/agi-*.log"):
        for conn in parse_agi_capture(path):
            for line in conn.rx_lines[len(conn.environment) :]:
                reply = p.parse_reply_line(line)
                if reply is not None:
                    forms.setdefault(line.decode().rstrip("\n"), reply)
    assert forms["200 result=49 endpos=13600"] == p.Reply(
        200, "result=49 endpos=13600", 49, None, 13600
    )
    assert forms["200 result= (timeout)"].data == "timeout"
    assert forms["200 result= (timeout)"].result is None
    assert forms["200 result=1 ()"].data == ""
    assert forms["200 result=-1 endpos=0"].result == -1
    assert forms["200 result=-2"].result == -2
    assert forms["510 Invalid or unknown command"].code == 510
    assert forms["511 Command Not Permitted on a dead channel or intercept routine"].dead_channel
    assert forms["200 result=1 (0x7f23d8002250)"].data == "0x7f23d8002250"


def test_the_520_usage_block_is_one_reply() -> None:
    parser = p.ReplyParser()
    lines = [
        b"520-Invalid command syntax.  Proper usage follows:\n",
        b"Waits up to <replaceable>timeout</replaceable> milliseconds.\n",
        b"520 End of proper usage.\n",
    ]
    events = [parser.feed(line) for line in lines]
    assert events[:2] == [None, None]
    reply = events[2]
    assert isinstance(reply, p.Reply) and reply.code == 520
    assert "Waits up to" in reply.usage
    assert parser.feed(b"HANGUP\n") == p.HangupNotice()


def test_a_closed_session_is_freed_without_the_cyclic_collector() -> None:
    """Python 3.11's transport holds a bound method of itself after it closed; unless the
    server drops it, every closed connection (transport, socket, extras) waits for the
    collector's full pass, which walks every call in progress (agi.server.release_transport)."""
    import gc
    import weakref

    refs: list[weakref.ref[asyncio.BaseTransport]] = []

    async def handler(session: AgiSession) -> None:
        refs.append(weakref.ref(session.transport))

    async def scenario() -> None:
        server = await started(handler)
        try:
            r, w = await talk(server.port, b"".join(ENV))
            assert await asyncio.wait_for(r.read(), 5) == b""  # handled and closed by us
            w.close()
            for _ in range(50):  # connection_lost runs a loop turn after the close
                await asyncio.sleep(0.01)
                if refs and refs[0]() is None:
                    break
        finally:
            await server.stop()

    gc.disable()
    try:
        asyncio.run(scenario())
        assert refs and refs[0]() is None, gc.get_referrers(refs[0]())
    finally:
        gc.enable()
