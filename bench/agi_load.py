"""FastAGI load: N concurrent consent sessions against our FastAGI server and, in the same run,
against panoramisk's ``fast_agi.Application`` running the equivalent script.

Each server runs in its own process; this process plays Asterisk: it opens the connections,
sends the environment captured from a real Asterisk 22 (``tests/fixtures/asterisk/``) and
answers every command at once with the captured reply forms — except the consent prompt, which
the caller "listens to" for ``--prompt-ms`` before pressing 1.

The script (both servers): read linkedid, caller number, presentation and channel state (one
``GET FULL VARIABLE``, base64-encoded), ``STREAM FILE`` the consent prompt, four
``SET VARIABLE`` s, ``EXEC MixMonitor``, read ``MIXMON_ID``, ``STREAM FILE`` thanks. Ours also
re-synchronises after the environment (the injection defence, folded into its first read);
panoramisk does not.

Three rounds per server:

* concurrent: calls arrive over ``--ramp-s`` and each listens to the prompt, so all N are up at
  once — peak concurrency and command turnaround (from a reply written to the next command
  read: the server's own latency) under a realistic load;
* throughput: all N at once without a prompt — sessions/s;
* hangups: as throughput, but every 10th caller hangs up after pressing 1, so ``HANGUP``
  arrives right before the reply to the next command (capture ``exec_read_hangup``); a server
  that takes it for a reply pairs every later reply with the wrong command, which it reports
  (``wrong``).

The throughput round is run five times and the hangups round three, and the median run is
shown: a run is about a second on two cores shared with the load generator, and varies. Each
row also shows the CPU time the server process used (``/proc``) and the sessions per
server CPU-second: the servers' own cost, which the generator's share of the cores blurs in
sessions/s. The generator drives each channel with protocol callbacks, not a coroutine per
line, connects with a plain ``connect()`` (loopback completes it at once), and keeps one
deadline per round instead of a timer per call: whatever it costs is added to both servers'
time alike and pulls the sessions/s ratio towards 1.

    .venv/bin/python bench/agi_load.py [--quick] [--sessions N] [--prompt-ms MS] [--ramp-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

from _common import connect_loopback, cpu_seconds, free_port, raise_fd_limit, start_server

ROOT = Path(__file__).resolve().parent.parent
SESSION_LIMIT_S = 60.0
VALUES = ("${CHANNEL(linkedid)}", "${CALLERID(num)}", "${CALLERID(num-pres)}", "${CHANNEL(state)}")
PROMPT = "/var/lib/callconsent/prompts/en/consent"
THANKS = "/var/lib/callconsent/prompts/en/thanks"
REC = "/var/lib/callconsent/spool/0b0e8d52-4c3e-4d0e-9d2a-0c6a1f7d3e11.wav"
WRONG = b'NOOP "wrong reply"\n'  # a server tells the load generator it mis-paired a reply
ANSWERS = {  # what a real channel answers (the forms of the captures)
    "${CHANNEL(linkedid)}": "1795348625.74",
    "${CALLERID(num)}": "+4915112345678",
    "${CALLERID(num-pres)}": "allowed_not_screened",
    "${CHANNEL(state)}": "Up",
    "${MIXMON_ID}": "0x7f23d8002250",
}


def script_lines(linkedid: str) -> list[str]:
    """The equivalent script as raw command lines (panoramisk sends exactly these)."""
    sys.path.insert(0, str(ROOT))
    from agi import protocol as p

    return [
        p.values_command(VALUES).decode().rstrip("\n"),
        p.stream_file_command(PROMPT, "12").decode().rstrip("\n"),
        *(
            p.set_variable_command(name, value).decode().rstrip("\n")
            for name, value in (
                ("__CONSENT_STATUS", "granted"),
                ("__CONSENT_ID", "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
                ("__CONSENT_RECORDING_ID", "0b0e8d52-4c3e-4d0e-9d2a-0c6a1f7d3e11"),
                ("__CONSENT_CALL", linkedid),
            )
        ),
        p.exec_command("MixMonitor", REC, "i(MIXMON_ID)").decode().rstrip("\n"),
        p.values_command(("${MIXMON_ID}",)).decode().rstrip("\n"),
        p.stream_file_command(THANKS, "").decode().rstrip("\n"),
    ]


# -- the servers under test (each in its own process) -----------------------------------------


async def serve_ours(port: int) -> None:
    sys.path.insert(0, str(ROOT))
    from agi.server import FastAgiServer, ServerLimits
    from agi.session import AgiSession

    async def consent(session: AgiSession) -> None:
        linkedid, _number, _pres, _state = await session.values(*VALUES) or [""] * 4
        reply = await session.stream_file(PROMPT, "12", 30)
        assert reply.result == 49
        for name, value in (
            ("__CONSENT_STATUS", "granted"),
            ("__CONSENT_ID", "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
            ("__CONSENT_RECORDING_ID", "0b0e8d52-4c3e-4d0e-9d2a-0c6a1f7d3e11"),
            ("__CONSENT_CALL", linkedid),
        ):
            await session.set_variable(name, value)
        await session.exec("MixMonitor", REC, "i(MIXMON_ID)")
        if await session.value("${MIXMON_ID}") != ANSWERS["${MIXMON_ID}"]:
            await session.command(WRONG)  # a reply was paired with the wrong command
        await session.stream_file(THANKS, "", 30)

    server = FastAgiServer(
        lambda env: consent, "127.0.0.1", port, ServerLimits(max_sessions=100000)
    )
    await server.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def serve_panoramisk(port: int) -> None:
    import logging

    from panoramisk.fast_agi import Application

    logging.getLogger("panoramisk").setLevel(logging.WARNING)
    lines = script_lines("1795348625.74")

    async def consent(request) -> None:  # type: ignore[no-untyped-def]
        values = await request.send_command(lines[0])
        linkedid = base64.b64decode(values["result"][1].split("|")[0]).decode()
        reply = await request.send_command(lines[1])
        assert reply["result"][0] == "49"
        for line in lines[2:5]:
            await request.send_command(line)
        await request.send_command(lines[5].replace("1795348625.74", linkedid))
        await request.send_command(lines[6])
        mixmon = await request.send_command(lines[7])
        data = (mixmon.get("result") or ("", ""))[1]
        if not data or base64.b64decode(data).decode() != ANSWERS["${MIXMON_ID}"]:
            await request.send_command(WRONG.decode().rstrip("\n"))
        await request.send_command(lines[8])

    app = Application(loop=asyncio.get_running_loop())
    app.add_route("consent", consent)
    await asyncio.start_server(app.handler, "127.0.0.1", port, backlog=4096)
    print("READY", flush=True)
    await asyncio.Event().wait()


# -- Asterisk's side -----------------------------------------------------------------------------


def captured_environment() -> bytes:
    sys.path.insert(0, str(ROOT / "tests" / "sim"))
    from asterisk_captures import fixture, parse_agi_capture

    conn = parse_agi_capture(fixture("asterisk/agi-accept_brief-1795345505.1.log"))[0]
    return b"".join(conn.environment)


class Peer:
    """N Asterisk channels. With ``hangup_every`` k, every k-th caller hangs up just after
    pressing 1: ``HANGUP`` arrives right before the reply to the next command (capture
    ``exec_read_hangup``), and media commands then get ``511``."""

    def __init__(self, port: int, prompt_s: float, env: bytes, hangup_every: int = 0) -> None:
        self.port, self.prompt_s, self.env = port, prompt_s, env
        self.hangup_every = hangup_every
        self.active = self.peak = 0
        self.turnaround: list[float] = []
        self.times: list[float] = []
        self.failures = self.wrong = self.hung_up = 0
        self._n = 0
        self.buffer = memoryview(bytearray(65536))  # every channel reads into it (one loop)

    def answer(self, line: bytes) -> bytes:
        if line.startswith(b'GET FULL VARIABLE "cc-sync-') and b"|" not in line:
            return b"200 result=1 (" + line.split(b'"')[1] + b")\n"
        if line.startswith(b"GET FULL VARIABLE"):
            exprs = line.decode().split('"')[1].split("|")
            nonce = [exprs.pop(0)] if exprs[0].startswith("cc-sync-") else []  # echoed as is
            found = [ANSWERS[e[len("${BASE64_ENCODE(") : -2]] for e in exprs]
            data = "|".join(nonce + [base64.b64encode(v.encode()).decode() for v in found])
            return f"200 result=1 ({data})\n".encode()
        if line.startswith(b"STREAM FILE"):
            return (
                b"200 result=49 endpos=9600\n"
                if b"consent" in line
                else b"200 result=0 endpos=26970\n"
            )
        if line.startswith((b"SET VARIABLE", b"NOOP")):
            return b"200 result=1\n"
        if line.startswith(b"EXEC"):
            return b"200 result=0\n"
        return b"510 Invalid or unknown command\n"

    async def session(self) -> None:
        self._n += 1
        hangs_up = bool(self.hangup_every) and self._n % self.hangup_every == 0
        loop = asyncio.get_running_loop()
        channel = _Channel(self, hangs_up, loop.create_future())
        start = time.perf_counter()
        if not await connect_loopback(self.port, channel):
            self.failures += 1
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await channel.closed
        finally:
            self.active -= 1
            if channel.transport is not None:  # given up on (SESSION_LIMIT_S)
                channel.transport.close()
        if channel.dead:
            self.hung_up += 1
        elif channel.commands >= 9:
            self.times.append(time.perf_counter() - start)
        else:
            self.failures += 1


class _Channel(asyncio.BufferedProtocol):
    """One Asterisk channel's AGI socket, driven by callbacks rather than a coroutine per
    line: the load generator shares two cores with the server it measures, so the cheaper it
    is, the more of the measured rate is the server's."""

    def __init__(self, peer: Peer, hangs_up: bool, closed: asyncio.Future[None]) -> None:
        self.peer, self.hangs_up, self.closed = peer, hangs_up, closed
        self.commands, self.dead = 0, False
        self.sent = 0.0
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.peer.env)
        self.sent = time.perf_counter()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.peer.buffer

    def buffer_updated(self, nbytes: int) -> None:
        *lines, self.rest = (self.rest + self.peer.buffer[:nbytes].tobytes()).split(b"\n")
        for line in lines:
            self.line(line + b"\n")

    def line(self, line: bytes) -> None:
        peer = self.peer
        peer.turnaround.append(time.perf_counter() - self.sent)
        self.commands += 1
        if line == WRONG:
            peer.wrong += 1
        reply = peer.answer(line)
        if self.hangs_up and not self.dead and line.startswith(b"SET VARIABLE"):
            self.dead = True
            reply = b"HANGUP\n" + reply
        elif self.dead and line.startswith((b"STREAM FILE", b"WAIT FOR DIGIT")):
            reply = b"511 Command Not Permitted on a dead channel or intercept routine\n"
        if line.startswith(b"STREAM FILE") and b"consent" in line and peer.prompt_s:
            # the caller listens, then presses 1
            asyncio.get_running_loop().call_later(peer.prompt_s, self.write, reply)
        else:
            self.write(reply)

    def write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
            self.sent = time.perf_counter()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)


async def load(
    port: int,
    sessions: int,
    prompt_ms: int,
    env: bytes,
    *,
    ramp_s: float = 0.0,
    hangup_every: int = 0,
) -> dict[str, float]:
    peer = Peer(port, prompt_ms / 1000, env, hangup_every)

    async def arrive(i: int) -> None:
        if ramp_s:
            await asyncio.sleep(ramp_s * i / sessions)  # calls arrive over the ramp
        await peer.session()

    start, cpu = time.perf_counter(), time.process_time()
    # one deadline for the round, not a timer per session (the generator's CPU is shared)
    calls = [asyncio.ensure_future(arrive(i)) for i in range(sessions)]
    _, late = await asyncio.wait(calls, timeout=ramp_s + SESSION_LIMIT_S)
    for call in late:
        call.cancel()
    peer.failures += len(late)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    turn = sorted(peer.turnaround)

    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {
        "sessions": len(peer.times),
        "failures": peer.failures,
        "hung_up": peer.hung_up,
        "wrong_replies": peer.wrong,
        "peak_concurrent": peer.peak,
        "wall_s": round(wall, 3),
        "sessions_per_s": round((len(peer.times) + peer.hung_up) / wall, 1),
        "turnaround_p50_ms": pct(turn, 0.50),
        "turnaround_p99_ms": pct(turn, 0.99),
        "generator_cpu_s": round(cpu, 3),
    }


# -- orchestration ------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 1 min)")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--prompt-ms", type=int, default=None, help="consent prompt length")
    parser.add_argument("--ramp-s", type=float, default=None, help="calls arrive over this")
    parser.add_argument("--serve", choices=("ours", "panoramisk"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve:
        asyncio.run(serve_ours(args.port) if args.serve == "ours" else serve_panoramisk(args.port))
        return 0
    n = args.sessions or (2000 if args.quick else 4000)
    prompt_ms = args.prompt_ms or (2000 if args.quick else 4000)
    ramp_s = args.ramp_s if args.ramp_s is not None else (1.0 if args.quick else 2.0)
    env = captured_environment()
    import importlib.metadata

    pano = importlib.metadata.version("panoramisk")
    rounds = {
        "concurrent": {"prompt_ms": prompt_ms, "ramp_s": ramp_s},
        "throughput": {"prompt_ms": 0, "repeat": 5},
        "hangups": {"prompt_ms": 0, "hangup_every": 10, "repeat": 3},
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("ours", "panoramisk"):
        port = free_port()
        proc = start_server(__file__, kind, port)
        try:
            asyncio.run(load(port, min(100, n), 0, env))  # warm-up
            results[kind] = {}
            for name, r in rounds.items():
                runs = []
                for _ in range(r.get("repeat", 1)):
                    cpu = cpu_seconds(proc.pid)
                    out = asyncio.run(
                        load(
                            port,
                            n,
                            r["prompt_ms"],
                            env,
                            ramp_s=r.get("ramp_s", 0.0),
                            hangup_every=r.get("hangup_every", 0),
                        )
                    )
                    out["server_cpu_s"] = round(cpu_seconds(proc.pid) - cpu, 3)
                    out["sessions_per_cpu_s"] = round(
                        (out["sessions"] + out["hung_up"]) / max(out["server_cpu_s"], 1e-3), 1
                    )
                    runs.append(out)
                # the median run by sessions/s: one short run on two shared cores is noisy
                results[kind][name] = sorted(runs, key=lambda o: o["sessions_per_s"])[
                    len(runs) // 2
                ]
        finally:
            proc.kill()
            proc.wait()
    print(f"\nFastAGI consent sessions: {n} per round (panoramisk {pano})")
    print(f"  concurrent: arriving over {ramp_s} s, each listening to a {prompt_ms} ms prompt")
    print("  throughput: all at once, no prompt (the median of 5 runs)")
    print("  hangups:    all at once (median of 3); every 10th caller hangs up after pressing 1")
    print("              (HANGUP arrives right before the reply to the next command)")
    head = f"{'server':<11} {'round':<11} {'done':>6} {'hungup':>6} {'wrong':>6} {'fail':>5}"
    print(
        head
        + f" {'peak':>6} {'sess/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        + f" {'cpu s':>7} {'/cpu-s':>8} {'gen s':>7}"
    )
    for kind, by_round in results.items():
        for name, r in by_round.items():
            print(
                f"{kind:<11} {name:<11} {r['sessions']:>6} {r['hung_up']:>6} "
                f"{r['wrong_replies']:>6} {r['failures']:>5} {r['peak_concurrent']:>6} "
                f"{r['sessions_per_s']:>8} "
                f"{r['turnaround_p50_ms']:>7} {r['turnaround_p99_ms']:>7}"
                f" {r['server_cpu_s']:>7} {r['sessions_per_cpu_s']:>8} {r['generator_cpu_s']:>7}"
            )
    ours, theirs = results["ours"], results["panoramisk"]
    ratio_tp = round(
        ours["throughput"]["sessions_per_s"] / theirs["throughput"]["sessions_per_s"], 2
    )
    ratio_p99 = round(
        theirs["concurrent"]["turnaround_p99_ms"] / ours["concurrent"]["turnaround_p99_ms"], 2
    )
    ratio_cpu = round(
        ours["throughput"]["sessions_per_cpu_s"] / theirs["throughput"]["sessions_per_cpu_s"], 2
    )
    print(f"ratio ours/panoramisk, sessions/s (throughput): {ratio_tp}  (goal >= 1.5)")
    print(
        f"ratio ours/panoramisk, sessions per server CPU-second (throughput): {ratio_cpu}  (the "
        "servers' own cost: the load generator shares the two cores)"
    )
    print(f"ratio panoramisk/ours, p99 turnaround (concurrent): {ratio_p99}  (goal: ours <= 5 ms)")
    print(
        "wrong replies after a hangup: ours "
        f"{ours['hangups']['wrong_replies']}, panoramisk {theirs['hangups']['wrong_replies']}"
    )
    print(
        json.dumps(
            {
                "bench": "agi_load",
                "sessions": n,
                "prompt_ms": prompt_ms,
                "ramp_s": ramp_s,
                "ours": ours,
                "panoramisk": theirs,
                "panoramisk_version": pano,
                "ratio_sessions_per_s": ratio_tp,
                "ratio_sessions_per_cpu_s": ratio_cpu,
                "ratio_p99_turnaround": ratio_p99,
                "goals": {"concurrent_sessions": 2000, "p99_ms": 5.0, "ratio": 1.5},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
