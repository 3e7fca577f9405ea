"""ESL outbound-socket load: N concurrent consent sessions against our outbound server and, in
the same run, against genesis's outbound server doing the equivalent flow.

Each server runs in its own process (ours from this repository's virtualenv, genesis from a
bench-only virtualenv, ``bench/.venv-genesis``, created here on first use: genesis pins old
dependencies and refuses Python 3.13, so it gets Debian's python3.11 and never touches ours).
This process plays FreeSWITCH: it opens N connections at once, like N calls reaching the
``socket`` application, and answers with frames cut from the captured FreeSWITCH 1.10.12 session
(``tests/fixtures/freeswitch/outbound/accept_record_session``): the 110-header ``connect``
reply, command replies, and for each ``execute`` the CHANNEL_EXECUTE / app events /
CHANNEL_EXECUTE_COMPLETE with the caller's Event-UUID. The caller "listens" to the prompt for
``--prompt-ms`` before pressing 1, so sessions overlap.

The flow (both servers): connect, myevents/event subscription, linger, answer,
play_and_get_digits (digit read from ``variable_callconsent_digit``), three exports,
record_session, exit. Reported: sessions/s over the whole batch, p50/p99 session time (TCP
connect to close), peak concurrent sessions, and ours/genesis throughput ratio.

    .venv/bin/python bench/esl_load.py [--quick] [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _common import free_port, raise_fd_limit, start_server

ROOT = Path(__file__).resolve().parent.parent
GENESIS_VENV = ROOT / "bench" / ".venv-genesis"
GENESIS_PYTHON = ("/usr/bin/python3.11", "python3.11", "/usr/bin/python3")
PGD_ARG = (
    "1 1 1 5000 # /var/voip/prompts/consent.wav silence_stream://250 callconsent_digit "
    "^[0-9*A-D]$ 5000"
)
RECORD_ARG = "/var/spool/callconsent/{u}.wav {{RECORD_STEREO=false,RECORD_PRE_BUFFER_FRAMES=0}}"
SESSION_LIMIT_S = 60.0  # a session still open after this counts as failed
EXPORTS = ("consent_status=granted", "consent_id={u}", "consent_recording_id={u}")


# -- the servers under test (run in their own processes) ---------------------------------------


async def serve_ours(port: int) -> None:
    sys.path.insert(0, str(ROOT))
    from esl_listener.outbound import OutboundServer

    async def session(conn, channel):  # type: ignore[no-untyped-def]
        await conn.send("myevents")
        await conn.send("event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP")
        await conn.send("linger")
        await conn.execute("answer")
        done = await conn.execute("play_and_get_digits", PGD_ARG)
        assert done.get("variable_callconsent_digit") == "1"
        u = str(uuid.uuid4())
        for export in EXPORTS:
            await conn.execute("export", export.format(u=u))
        await conn.execute("record_session", RECORD_ARG.format(u=u))
        await conn.send("exit")

    server = OutboundServer(session, "127.0.0.1", port)
    await server.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def serve_genesis(port: int) -> None:
    import logging

    from genesis import Outbound

    logging.getLogger("genesis").setLevel(logging.WARNING)

    async def session(s):  # type: ignore[no-untyped-def]
        await s.send("event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP")
        await s.sendmsg("execute", "answer", lock=True, block=True)
        done = await s.sendmsg("execute", "play_and_get_digits", PGD_ARG, lock=True, block=True)
        assert done.get("variable_callconsent_digit") == "1"
        u = str(uuid.uuid4())
        for export in EXPORTS:
            await s.sendmsg("execute", "export", export.format(u=u), lock=True, block=True)
        await s.sendmsg("execute", "record_session", RECORD_ARG.format(u=u), lock=True, block=True)
        await s.send("exit")

    server = Outbound(session, "127.0.0.1", port, events=True, linger=True)
    await server.start(block=False)
    print("READY", flush=True)
    await asyncio.Event().wait()


# -- FreeSWITCH's side: captured frames, N sessions at once --------------------------------------

UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PLACE_CHAN = b"cccccccc-cccc-cccc-cccc-cccccccccccc"
PLACE_APP = b"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"


def captured_frames() -> dict[str, bytes]:
    """Frames of the captured accept session, channel UUID replaced by a same-length mark."""
    sys.path.insert(0, str(ROOT / "tests" / "sim"))
    sys.path.insert(0, str(ROOT))
    import fs_captures

    from esl_listener.protocol import FrameParser, parse_plain_event

    cap = fs_captures.load("accept_record_session")
    chan = b"bfd9fadb-33c5-469f-9ffc-6bc94fd47352"
    frames: dict[str, bytes] = {"connect": cap.steps[1].data.replace(chan, PLACE_CHAN)}
    for step in cap.steps:
        if step.direction != "rx":
            continue
        for frame in FrameParser().feed(step.data):
            if frame.content_type != "text/event-plain":
                continue
            event = parse_plain_event(frame.body)
            key = event.name
            if key.startswith("CHANNEL_EXECUTE"):
                key += ":" + (event.get("Application") or "")
            raw = step.data.replace(chan, PLACE_CHAN)
            app_uuid = (event.get("Application-UUID") or "").encode()
            if app_uuid:
                raw = raw.replace(app_uuid, PLACE_APP)
            # the capture's client named its digit variable consent_digit; ours is callconsent_digit
            frames.setdefault(
                key,
                _relength(raw.replace(b"variable_consent_digit:", b"variable_callconsent_digit:")),
            )
    return frames


def _relength(frame: bytes) -> bytes:
    head, _, body = frame.partition(b"\n\n")
    head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), head)
    return head + b"\n\n" + body


class Peer:
    def __init__(self, port: int, prompt_ms: int, frames: dict[str, bytes]) -> None:
        self.port, self.prompt_s, self.f = port, prompt_ms / 1000, frames
        self.active = self.peak = 0
        self.times: list[float] = []
        self.failures = 0
        self.reasons: dict[str, int] = {}

    async def session(self) -> None:
        start = time.perf_counter()
        chan = str(uuid.uuid4()).encode()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.failures += 1
            self.reasons["connect"] = self.reasons.get("connect", 0) + 1
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        f = self.f
        ok = False

        def send(key: str, app: bytes = PLACE_APP) -> None:
            writer.write(f[key].replace(PLACE_CHAN, chan).replace(PLACE_APP, app))

        try:
            while True:
                block = await reader.readuntil(b"\n\n")
                first = block.split(b"\n", 1)[0]
                if first == b"connect":
                    writer.write(f["connect"].replace(PLACE_CHAN, chan))
                elif first == b"myevents":
                    writer.write(b"Content-Type: command/reply\nReply-Text: +OK Events Enabled\n\n")
                elif first.startswith(b"event "):
                    writer.write(
                        b"Content-Type: command/reply\n"
                        b"Reply-Text: +OK event listener enabled plain\n\n"
                    )
                elif first.startswith(b"filter "):
                    writer.write(
                        b"Content-Type: command/reply\nReply-Text: +OK filter added. [Unique-ID]=["
                        + chan
                        + b"]\n\n"
                    )
                elif first == b"linger":
                    writer.write(b"Content-Type: command/reply\nReply-Text: +OK will linger\n\n")
                elif first == b"sendmsg":
                    headers = dict(line.split(b": ", 1) for line in block.strip().split(b"\n")[1:])
                    app = headers[b"execute-app-name"].decode()
                    event_uuid = headers.get(b"Event-UUID", PLACE_APP)
                    writer.write(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
                    if app == "play_and_get_digits":
                        send("CHANNEL_EXECUTE:play_and_get_digits", event_uuid)
                        send("PLAYBACK_START")
                        await writer.drain()
                        await asyncio.sleep(self.prompt_s)  # the caller listens, then presses 1
                        send("DTMF")
                        send("PLAYBACK_STOP")
                        send("CHANNEL_EXECUTE_COMPLETE:play_and_get_digits", event_uuid)
                    elif app == "answer":
                        send("CHANNEL_EXECUTE:answer", event_uuid)
                        send("CHANNEL_ANSWER")
                        send("CHANNEL_EXECUTE_COMPLETE:answer", event_uuid)
                    elif app == "record_session":
                        send("CHANNEL_EXECUTE:record_session", event_uuid)
                        send("RECORD_START")
                        send("CHANNEL_EXECUTE_COMPLETE:record_session", event_uuid)
                    else:  # export: same frames as the captured record_session's, renamed
                        send("CHANNEL_EXECUTE:record_session", event_uuid)
                        send("CHANNEL_EXECUTE_COMPLETE:record_session", event_uuid)
                elif first == b"exit":
                    writer.write(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
                    writer.write(
                        b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: "
                        + chan
                        + b"\nContent-Disposition: disconnect\nContent-Length: 67\n\n"
                        b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
                    )
                    await writer.drain()
                    ok = True
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.reasons[type(exc).__name__] = self.reasons.get(type(exc).__name__, 0) + 1
        finally:
            self.active -= 1
            writer.close()
        if ok:
            self.times.append(time.perf_counter() - start)
        else:
            self.failures += 1


async def _bounded(session, peer: Peer) -> None:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(session, SESSION_LIMIT_S)
    except TimeoutError:
        peer.failures += 1
        peer.reasons["timeout"] = peer.reasons.get("timeout", 0) + 1


async def load(
    port: int, sessions: int, prompt_ms: int, frames: dict[str, bytes]
) -> dict[str, float]:
    peer = Peer(port, prompt_ms, frames)
    start = time.perf_counter()
    await asyncio.gather(*(_bounded(peer.session(), peer) for _ in range(sessions)))
    wall = time.perf_counter() - start
    times = sorted(peer.times)

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1000 if times else float("nan")

    return {
        "sessions": len(times),
        "failures": peer.failures,
        "failure_reasons": peer.reasons,
        "peak_concurrent": peer.peak,
        "wall_s": round(wall, 3),
        "sessions_per_s": round(len(times) / wall, 1),
        "p50_ms": round(pct(0.50), 1),
        "p99_ms": round(pct(0.99), 1),
    }


# -- orchestration ----------------------------------------------------------------------------


def genesis_python() -> tuple[str | None, str]:
    """The bench-only genesis virtualenv's python, created on first use."""
    py = GENESIS_VENV / "bin" / "python"
    if not py.exists():
        base = next((p for p in GENESIS_PYTHON if _runs(p)), None)
        if base is None:
            return None, "no python3.11 to build bench/.venv-genesis with"
        subprocess.run([base, "-m", "venv", str(GENESIS_VENV)], check=True)
        res = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "genesis"], capture_output=True, text=True
        )
        if res.returncode != 0:
            return None, "pip install genesis failed: " + res.stderr.strip().splitlines()[-1]
    ver = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.metadata as m, sys; "
            "print(m.version('genesis'), sys.version.split()[0])",
        ],
        capture_output=True,
        text=True,
    )
    if ver.returncode != 0:
        return None, "genesis does not import in bench/.venv-genesis"
    return str(py), ver.stdout.strip()


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import venv"], capture_output=True).returncode == 0
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 1 min)")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--prompt-ms", type=int, default=500)
    parser.add_argument("--only", choices=("ours", "genesis"), help="run one server only")
    parser.add_argument("--serve", choices=("ours", "genesis"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve:
        asyncio.run(serve_ours(args.port) if args.serve == "ours" else serve_genesis(args.port))
        return 0
    n = args.sessions or (500 if args.quick else 2000)
    frames = captured_frames()
    results: dict[str, dict[str, float]] = {}
    gpy, gnote = genesis_python()
    runs = [("ours", sys.executable)] + ([("genesis", gpy)] if gpy else [])
    runs = [r for r in runs if not args.only or r[0] == args.only]
    for kind, python in runs:
        port = free_port()
        proc = start_server(__file__, kind, port, python)
        try:
            asyncio.run(load(port, min(50, n), args.prompt_ms, frames))  # warm-up
            results[kind] = asyncio.run(load(port, n, args.prompt_ms, frames))
        finally:
            proc.kill()
            proc.wait()
    print(f"\nESL outbound sessions: {n} at once, prompt {args.prompt_ms} ms (genesis: {gnote})")
    print(
        f"{'server':<8} {'done':>6} {'fail':>5} {'peak':>6} {'sess/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for kind, r in results.items():
        print(
            f"{kind:<8} {r['sessions']:>6} {r['failures']:>5} {r['peak_concurrent']:>6} "
            f"{r['sessions_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8}"
        )
    ratio = None
    if "ours" in results and "genesis" in results and results["genesis"]["sessions_per_s"]:
        ratio = round(results["ours"]["sessions_per_s"] / results["genesis"]["sessions_per_s"], 2)
        print(f"ratio ours/genesis (sessions/s): {ratio}  (goal >= 1.5)")
    print(
        json.dumps(
            {
                "bench": "esl_load",
                "sessions": n,
                "prompt_ms": args.prompt_ms,
                "ours": results.get("ours"),
                "genesis": results.get("genesis"),
                "genesis_version": gnote,
                "ratio_sessions_per_s": ratio,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
