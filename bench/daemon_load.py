"""The whole daemon under load: ``callconsent serve`` in its own process (SQLite, or with
``--postgres`` a throwaway PostgreSQL server), driven by a load generator playing Asterisk's
FastAGI side and AMI (``bench/_asterisk_peer.py``): each caller hears the consent prompt,
presses 1, ``MixMonitor`` starts, the caller talks, hangs up (AMI ``Hangup``), the recording is
closed, finalized (encrypted) and the call ends, as in production. Over AMI each call sends
the 70 events Asterisk 22 sent for a captured consent call, to the AMI user we ship
(``read = call`` and its event filters); ``--ami-user all``: a ``read = all`` user without
filters, where only the daemon's login (``Events: call``) filters.

Rounds (one daemon, one database, in this order):

* burst: ``--burst`` calls at once, short prompt and talk;
* steady: calls arrive at ``--rate`` per second for ``--steady-s``, each lasting ``--call-s``
  (prompt + talk): ``rate × call-s`` calls up at once (2,000 by default);
* long: the same arrival rate for ``--long-s``, reported per window: calls completed, p99
  turnaround, daemon CPU per call and RSS, so a slowdown or growth over time shows;
* one core: the issue's "≥ 400 full calls/s on one core" measured as it reads. The daemon's
  threads are pinned to one CPU and the load generator to the others; short calls
  (``ONE_CORE_CALL_S``) arrive at rising rates (``ONE_CORE_RATES``), each step a round of its
  own: calls completed per second while steady (from one call length in to the last
  arrival), how busy the core was then, the daemon's CPU per call over the whole step (until
  it is idle again: encryptions that fell behind are done after the last call and count),
  the core that rate needs (rate × CPU per call), and how busy the generator was. The
  capacity is the highest rate one core carries: no failure, turnaround p99 ≤ 20 ms,
  completions keeping up (≥ 0.95 of arrivals), and no more than the one core needed.

``--daemon-cpu N`` pins the daemon's threads to CPU N for every round, as ``CPUAffinity=N`` in
its systemd unit would (``deploy/callconsent.service``), and the generator to the other CPUs:
the same calls with the GIL's hand-offs between threads kept on one CPU.

Figures: turnaround (from our reply written to the daemon's next command read) p50/p99/max,
accept digit → ``EXEC MixMonitor`` p99, daemon CPU-ms per call (``/proc/<pid>/stat``, until
the daemon is idle again after the round), store transactions per call (the daemon counts
them with ``CALLCONSENT_STORE_STATS=1``), calls/s, daemon RSS.

In the same run, the limit (``bench/_limits.py``): the same number of sessions through the
FastAGI server alone (``bench/agi_load.py``'s consent script, no store), and a bare SQLAlchemy
Core insert of the rows one call stores, in one transaction per call. And each part of a call
alone with its calls arriving at the steady round's rate (``parts_alone``): the FastAGI server,
the call's rows through the DB-API cursor, the format's minimum work on its recording; their
sum (``parts_alone_cpu_ms_per_call``) is what the three cost with nothing between them.

    .venv/bin/python bench/daemon_load.py [--quick] [--postgres] [--ami-user all] [--daemon-cpu N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import _asterisk_peer as ap
import _daemon_rig as rig
import _freeswitch_peer as fp
from _common import cpu_seconds, cpu_split, free_port, no_full_collections, raise_fd_limit
from _limits import fastagi_alone, format_floor, store_floor

GOALS = {
    "steady_p99_ms": 20.0,
    "steady_max_ms": 100.0,
    "digit_to_record_p99_ms": 25.0,
    "cpu_ms_per_call": 2.0,
    "long_throughput_ratio": 0.95,
    "rss_growth_mib": 5.0,
    "one_core_calls_per_s": 400.0,
}

#: the one-core round: rising arrival rates (calls/s) of 2 s calls (prompt 0.5 s), each for
#: ``ONE_CORE_STEP_S``; ``--quick`` runs one short step at the goal's rate
ONE_CORE_RATES = (100, 150, 200, 250, 300, 400, 500)
ONE_CORE_RATES_QUICK = (400,)
ONE_CORE_CALL_S = 2.0
ONE_CORE_STEP_S = 12.0
ONE_CORE_STEP_S_QUICK = 4.0


#: the daemon's threads by kernel name (``recorder.store.writer.name_os_thread``); the event
#: loop is the main thread (its id is the process id); "other": asyncio's executor threads,
#: the metrics server, and threads that ended between two samples.
THREADS = ("event_loop", "store_writer", "finalizer", "other")
_CLK = os.sysconf("SC_CLK_TCK")


def thread_kind(pid: int, tid: int, comm: str) -> str:
    if tid == pid:
        return "event_loop"
    if comm.startswith("cc-store-writer"):
        return "store_writer"
    if comm.startswith("cc-finalizer"):
        return "finalizer"
    return "other"


class ThreadCpu:
    """The daemon's CPU by thread (``/proc/<pid>/task/*/stat``), sampled often enough that a
    thread ending (the store writer stops after 2 s idle) loses at most one interval, which
    ``other`` then holds (the process total is exact).

    Also how often each thread was scheduled in (``/proc/<pid>/task/*/schedstat``, its third
    field): every wake-up is a switch, and across CPUs an interrupt between them, which a
    VM pays dearly for. A thread that gives up the GIL for a system call while another
    wants it is scheduled in again when it gets it back: the count shows that convoy
    (docs/performance.md, stop 27)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # tid -> (kind, cpu seconds, times scheduled in)
        self.seen: dict[int, tuple[str, float, int]] = {}
        self.sample()

    def sample(self) -> None:
        for tid_s in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid_s}/stat") as f:
                    head, _, rest = f.read().rpartition(")")
                with open(f"/proc/{self.pid}/task/{tid_s}/schedstat") as f:
                    runs = int(f.read().split()[2])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
            fields = rest.split()
            tid = int(tid_s)
            comm = head.split("(", 1)[1]
            self.seen[tid] = (
                thread_kind(self.pid, tid, comm),
                (int(fields[11]) + int(fields[12])) / _CLK,
                runs,
            )

    def totals(self) -> dict[str, float]:
        out = dict.fromkeys(THREADS, 0.0)
        for kind, cpu, _ in self.seen.values():
            out[kind] += cpu
        return out

    def runs(self) -> dict[str, int]:
        """Times scheduled in, by kind of thread (a thread ended unsampled: its last sample)."""
        out = dict.fromkeys(THREADS, 0)
        for kind, _, runs in self.seen.values():
            out[kind] += runs
        return out

    async def follow(self, every_s: float = 0.25) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.sample()


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def idle_cpu(pid: int, settle_s: float = 0.5, limit_s: float = 30.0) -> float:
    """The daemon's CPU seconds once it has stopped working (finalizer, closures)."""
    deadline = time.monotonic() + limit_s
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(settle_s)
        now = cpu_seconds(pid)
        if now - last < 0.02 * settle_s:
            return now
        last = now
    return last


async def arrive(peer: Any, calls: int, rate: float) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(calls):
        if rate:
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(peer.call()))
    return tasks


async def run_round(
    daemon: rig.Daemon,
    make_peer: Callable[[str, float, float], Any],
    name: str,
    calls: int,
    rate: float,
    prompt_s: float,
    talk_s: float,
    window_s: float = 0.0,
    say_windows: bool = True,
) -> dict[str, object]:
    peer = make_peer(f"{name}{int(time.time())}", prompt_s, talk_s)
    rss0, tx0, cpu0 = daemon.rss_mib(), daemon.transactions(), cpu_seconds(daemon.pid)
    sys0 = cpu_split(daemon.pid)[1]
    log0 = daemon.log_size()
    threads = ThreadCpu(daemon.pid)
    by_thread0, runs0 = threads.totals(), threads.runs()
    follower = asyncio.ensure_future(threads.follow())
    start = time.monotonic()
    windows: list[dict[str, float]] = []
    watcher = None
    if window_s:
        watcher = asyncio.ensure_future(watch(daemon, peer, start, window_s, windows, say_windows))
    with no_full_collections():  # the generator's own pauses are not the daemon's
        tasks = await arrive(peer, calls, rate)
        await asyncio.wait(tasks, timeout=prompt_s + talk_s + 120)
    wall = max(peer.done_at or [time.monotonic()]) - start
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    cpu = await idle_cpu(daemon.pid) - cpu0
    kernel = cpu_split(daemon.pid)[1] - sys0
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    threads.sample()
    by_thread = {k: v - by_thread0[k] for k, v in threads.totals().items()}
    by_thread["other"] += cpu - sum(by_thread.values())  # threads that ended unsampled
    tx = daemon.transactions()
    done = len(peer.done_at)
    out: dict[str, object] = {
        "calls": done,
        "failures": peer.failures + (calls - done - peer.failures),
        "peak_concurrent": peer.peak,
        "calls_per_s": round(done / wall, 1) if wall > 0 else 0.0,
        "turnaround_p50_ms": pct(peer.turnaround, 0.5),
        "turnaround_p99_ms": pct(peer.turnaround, 0.99),
        "turnaround_max_ms": pct(peer.turnaround, 1.0),
        "digit_to_record_p99_ms": pct(peer.digit_to_record, 0.99),
        "digit_to_record_max_ms": pct(peer.digit_to_record, 1.0),
        "cpu_ms_per_call": round(cpu * 1000 / max(done, 1), 2),
        "cpu_ms_per_call_by_thread": {
            k: round(v * 1000 / max(done, 1), 2) for k, v in by_thread.items()
        },
        # of cpu_ms_per_call, the kernel's: system calls, and sleeping and waking up
        "cpu_sys_ms_per_call": round(kernel * 1000 / max(done, 1), 2),
        "scheduled_per_call_by_thread": {
            k: round((v - runs0[k]) / max(done, 1), 1) for k, v in threads.runs().items()
        },
        "tx_per_call": round((tx["commit"] - tx0["commit"]) / max(done, 1), 2),
        "reads_per_call": round((tx["rollback"] - tx0["rollback"]) / max(done, 1), 2),
        "rss_start_mib": round(rss0, 1),
        "rss_end_mib": round(daemon.rss_mib(), 1),
    }
    # the store's slow batches, as the daemon says them (recorder/store/writer.py, by phase:
    # another connection's lock, the statements, the disk's commit): where a max came from
    slow = daemon.log_events("store_commit_slow", log0)
    out["store_commit_slow"] = len(slow)
    for line in slow[:5]:
        print(f"    daemon: {line.split(' event=', 1)[-1]}", flush=True)
    if windows:
        out["windows"] = windows
    return out


async def watch(
    daemon: rig.Daemon,
    peer: Any,
    start: float,
    window_s: float,
    out: list[dict[str, float]],
    say: bool = True,
) -> None:
    """Per window: calls completed, p99 turnaround, daemon CPU per call, RSS at its end."""
    t_mark, c_mark, cpu_mark = 0, 0, cpu_seconds(daemon.pid)
    while True:
        await asyncio.sleep(start + window_s * (len(out) + 1) - time.monotonic())
        done, turns = len(peer.done_at), peer.turnaround[t_mark:]
        cpu = cpu_seconds(daemon.pid)
        n = done - c_mark
        out.append(
            {
                "t_s": round(window_s * (len(out) + 1)),
                "completed": n,
                "p99_ms": pct(turns, 0.99),
                "cpu_ms_per_call": round((cpu - cpu_mark) * 1000 / max(n, 1), 2),
                "cpu_s": round(cpu - cpu_mark, 3),
                "rss_mib": round(daemon.rss_mib(), 1),
            }
        )
        w = out[-1]
        if say:
            print(
                f"    window t={w['t_s']}s completed={w['completed']} p99_ms={w['p99_ms']}"
                f" cpu_ms_per_call={w['cpu_ms_per_call']} rss_mib={w['rss_mib']}",
                flush=True,
            )
        t_mark, c_mark, cpu_mark = len(peer.turnaround), done, cpu


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus``; threads started later inherit it from their
    creator (the daemon's event loop starts its store writer and executor threads)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def pin_daemon(pid: int, cpu: int) -> None:
    """``--daemon-cpu``: every thread of the daemon on ``cpu`` for all its rounds (as
    ``CPUAffinity=`` in its systemd unit would, deploy/callconsent.service), the generator on
    the other CPUs."""
    ours = os.sched_getaffinity(0)
    pin(pid, {cpu})
    os.sched_setaffinity(0, ours - {cpu})
    print(f"  the daemon on CPU {cpu}, the load generator on {sorted(ours - {cpu})}", flush=True)


async def one_core(
    daemon: rig.Daemon, make_peer: Any, args: argparse.Namespace
) -> dict[str, object] | None:
    """The daemon on one CPU, the generator on the others, at rising rates (see above)."""
    daemon_before, ours_before = os.sched_getaffinity(daemon.pid), os.sched_getaffinity(0)
    everywhere = daemon_before | ours_before  # --daemon-cpu pinned both already
    if len(everywhere) < 2:
        print("  one core: skipped (the generator needs a CPU of its own)", flush=True)
        return None
    daemon_cpu = max(everywhere)
    generator = everywhere - {daemon_cpu}
    steps: list[dict[str, object]] = []
    seconds = ONE_CORE_STEP_S_QUICK if args.quick else ONE_CORE_STEP_S
    prompt_s = ONE_CORE_CALL_S / 4
    window_s = ONE_CORE_CALL_S / 2
    pin(daemon.pid, {daemon_cpu})
    os.sched_setaffinity(0, generator)
    try:
        for rate in ONE_CORE_RATES_QUICK if args.quick else ONE_CORE_RATES:
            calls = int(rate * seconds)
            print(f"  round one core at {rate} calls/s: {calls} calls ...", flush=True)
            own0, t0 = os.times(), time.monotonic()
            r = await run_round(
                daemon, make_peer, f"core{rate}", calls, rate, prompt_s,
                ONE_CORE_CALL_S - prompt_s, window_s, say_windows=False,
            )  # fmt: skip
            own1, wall = os.times(), time.monotonic() - t0  # the round, and its idle wait
            # steady: from one call length in (calls end as they arrive) to the last arrival
            ws = [w for w in r.pop("windows") if ONE_CORE_CALL_S < w["t_s"] <= seconds]  # type: ignore[attr-defined]
            span = window_s * len(ws)
            done = sum(w["completed"] for w in ws)
            cpu = sum(w["cpu_s"] for w in ws)
            r["offered_calls_per_s"] = rate
            r["steady_completed_per_s"] = round(done / span, 1) if span else 0.0
            r["daemon_core_busy"] = round(cpu / span, 2) if span else float("nan")
            r["cores_needed"] = round(rate * r["cpu_ms_per_call"] / 1000, 2)  # type: ignore[operator]
            r["generator_busy"] = round(
                (own1.user + own1.system - own0.user - own0.system) / wall, 2
            )
            r["met"] = bool(
                r["failures"] == 0
                and r["turnaround_p99_ms"] <= GOALS["steady_p99_ms"]  # type: ignore[operator]
                and r["steady_completed_per_s"] >= 0.95 * rate  # type: ignore[operator]
                and r["cores_needed"] <= 1.0  # type: ignore[operator]
            )
            steps.append(r)
            print(
                f"    {summary(r)} steady_completed_per_s={r['steady_completed_per_s']}"
                f" daemon_core_busy={r['daemon_core_busy']} cores_needed={r['cores_needed']}"
                f" generator_busy={r['generator_busy']} met={r['met']}",
                flush=True,
            )
            if not r["met"]:
                break
    finally:
        pin(daemon.pid, daemon_before)
        os.sched_setaffinity(0, ours_before)
    met = [s for s in steps if s["met"]]
    top = steps[-1]
    return {
        "daemon_cpu": daemon_cpu,
        "steps": steps,
        "calls_per_s": met[-1]["offered_calls_per_s"] if met else 0,
        "top_completed_per_s": top["steady_completed_per_s"],
        "top_cpu_ms_per_call": top["cpu_ms_per_call"],
        "top_cores_needed": top["cores_needed"],
        "top_core_busy": top["daemon_core_busy"],
    }


def print_one_core(core: dict[str, object]) -> None:
    print(
        f"\nthe daemon on one core (CPU {core['daemon_cpu']}), the generator on the others,"
        f" {ONE_CORE_CALL_S:g} s calls; done/s and core busy while steady, cpu over the whole step"
    )
    print(
        f"{'offered/s':>9} {'done/s':>7} {'calls':>6} {'fail':>5} {'peak':>5} {'p99 ms':>7}"
        f" {'max ms':>8} {'dig>rec p99':>11} {'cpu ms/call':>11} {'core busy':>9}"
        f" {'cores needed':>12} {'generator busy':>14} {'met':>5}"
    )
    for r in core["steps"]:  # type: ignore[attr-defined]
        print(
            f"{r['offered_calls_per_s']:>9} {r['steady_completed_per_s']:>7} {r['calls']:>6}"
            f" {r['failures']:>5} {r['peak_concurrent']:>5} {r['turnaround_p99_ms']:>7}"
            f" {r['turnaround_max_ms']:>8} {r['digit_to_record_p99_ms']:>11}"
            f" {r['cpu_ms_per_call']:>11} {r['daemon_core_busy']:>9}"
            f" {r['cores_needed']:>12} {r['generator_busy']:>14} {r['met']!s:>5}"
        )
    print(
        f"capacity on one core (the highest rate carried with the steady goals met):"
        f" {core['calls_per_s']} calls/s; at the top step {core['top_completed_per_s']}"
        f" calls/s done, {core['top_cpu_ms_per_call']} CPU-ms per call,"
        f" the core {core['top_core_busy']} busy, {core['top_cores_needed']} cores needed"
    )


def call_seconds(args: argparse.Namespace) -> float:
    return args.call_s or (4.0 if args.quick else 20.0)


#: how long each part of a call runs alone at the steady rate (``parts_alone``)
PARTS_S = 20.0
PARTS_S_QUICK = 0.5


def parts_alone(args: argparse.Namespace) -> dict[str, Any]:
    """Each part of a call alone, its calls arriving at the steady round's rate
    (``bench/_limits.py``): the FastAGI server with the round's prompt, the store's rows
    through the DB-API cursor (and, as issue 15 defines its limit, with SQLAlchemy Core),
    and the format's minimum work on the round's recordings. The sum of the first, the
    second and the last is what the three parts cost without anything between them."""
    steady = plan(args)["steady"]
    rate = steady["rate"]
    n = int(rate * (PARTS_S_QUICK if args.quick else PARTS_S))
    print(f"  each part alone at {rate:g} calls/s, {n} calls ...", flush=True)
    out: dict[str, Any] = {
        "calls": n,
        "rate": rate,
        "fastagi_alone": fastagi_alone(n, rate, steady["prompt_s"]),
        "store_cursor": store_floor(n, rate, cursor=True),
        "store_core": store_floor(n, rate),
        "format_floor": format_floor(n, rate, ap.final_wav()),
    }
    out["sum_cpu_ms_per_call"] = round(
        sum(out[k]["cpu_ms_per_call"] for k in ("fastagi_alone", "store_cursor", "format_floor")),
        3,
    )
    return out


def print_parts(parts: dict[str, Any], daemon_cpu_ms: float) -> None:
    print(f"\neach part of a call alone, {parts['calls']} calls at {parts['rate']:g} calls/s "
          "(the steady round's rate), CPU-ms per call:")  # fmt: skip
    rows = (
        ("fastagi_alone", "FastAGI server alone (the round's prompt, no store)"),
        ("store_cursor", "the call's rows, DB-API cursor as the writer runs them"),
        ("store_core", "the same with SQLAlchemy Core (issue 15's limit)"),
        ("format_floor", "the format's minimum work on its recording (key slot too)"),
    )
    for key, title in rows:
        print(f"  {title:<60} {parts[key]['cpu_ms_per_call']:>7.3f}")
    total = parts["sum_cpu_ms_per_call"]
    print(f"  {'sum: FastAGI + cursor + format, nothing between them':<60} {total:>7.3f}")
    print(f"  {'the whole daemon in the steady round':<60} {daemon_cpu_ms:>7.3f}"
          f"   (goal {GOALS['cpu_ms_per_call']:g})")  # fmt: skip


def plan(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The rounds; ``--quick`` is a smoke run (< 1 minute): shorter calls, so fewer up at once."""
    q = args.quick
    call_s = call_seconds(args)
    prompt_s = min(3.0, call_s / 4)
    rate = args.rate
    return {
        "burst": {"calls": args.burst or (200 if q else 1000), "rate": 0, "prompt_s": 0.2,
                  "talk_s": 0.5},
        "steady": {"calls": int(rate * (args.steady_s or (4 if q else 60 + call_s))),
                   "rate": rate, "prompt_s": prompt_s, "talk_s": call_s - prompt_s},
        "long": {"calls": int(rate * (args.long_s or (8 if q else 320))), "rate": rate,
                 "prompt_s": prompt_s, "talk_s": call_s - prompt_s,
                 "window_s": 2.0 if q else 60.0},
    }  # fmt: skip


async def rounds(
    daemon: rig.Daemon, make_peer: Any, args: argparse.Namespace, long: bool, burst: bool = True
) -> dict[str, object]:
    results: dict[str, object] = {}
    await run_round(daemon, make_peer, "warm", 50, 0, 0.05, 0.1)
    for name, r in plan(args).items():
        if (name == "long" and not long) or (name == "burst" and not burst):
            continue
        print(f"  round {name}: {int(r['calls'])} calls ...", flush=True)
        results[name] = await run_round(
            daemon, make_peer, name, int(r["calls"]), r["rate"], r["prompt_s"], r["talk_s"],
            r.get("window_s", 0.0),
        )  # fmt: skip
        print(f"    {summary(results[name])}", flush=True)  # type: ignore[arg-type]
    return results


async def whole_daemon(
    args: argparse.Namespace,
    database_url: str | None,
    freeswitch: bool,
    one_core_round: bool = False,
) -> dict[str, dict[str, object]]:
    """One daemon, its Asterisk adapter (FastAGI + AMI) and, with ``freeswitch``, its
    FreeSWITCH adapter (ESL) too; the Asterisk rounds (and with ``one_core_round`` the
    one-core steps), then the FreeSWITCH ones."""  # fmt: skip
    ami = ap.ami_server(rig.AMI_USER, rig.AMI_SECRET, shipped=args.ami_user == "shipped")
    await ami.start()
    fs = fp.LoadFreeSwitch(rig.ESL_PASSWORD)
    await fs.start()
    agi_port, outbound_port = free_port(), free_port()
    section = rig.asterisk_section(agi_port, ami.port)
    if freeswitch:
        section += "\n" + rig.freeswitch_section(outbound_port, fs.port)
    out: dict[str, dict[str, object]] = {}
    with rig.workdir() as base:
        cfg = rig.prepare(base, section, database_url)
        daemon = rig.start(cfg)
        try:
            for _ in range(200):
                if any(c.user for c in ami._clients) and (fs.inbound_clients or not freeswitch):
                    break
                await asyncio.sleep(0.05)
            if args.daemon_cpu is not None:
                pin_daemon(daemon.pid, args.daemon_cpu)

            def asterisk_peer(run: str, prompt_s: float, talk_s: float) -> ap.Peer:
                return ap.Peer(agi_port, ami, prompt_s, talk_s, run)

            def freeswitch_peer(run: str, prompt_s: float, talk_s: float) -> fp.Peer:
                fs.prompt_s = prompt_s
                fs.digit_to_record.clear()
                return fp.Peer(fs, outbound_port, talk_s)

            print("  Asterisk (FastAGI + AMI)", flush=True)
            out["asterisk"] = await rounds(daemon, asterisk_peer, args, long=not args.no_long)
            if one_core_round:
                core = await one_core(daemon, asterisk_peer, args)
                if core is not None:
                    out["one_core"] = core
            if freeswitch:
                print("  FreeSWITCH (ESL)", flush=True)
                # --quick: a short steady round only (the simulator is a slower generator)
                fs_args = argparse.Namespace(**vars(args))
                fs_args.steady_s = args.steady_s or (1.5 if args.quick else 20.0)
                fs_args.burst = args.burst or 300
                out["freeswitch"] = await rounds(
                    daemon, freeswitch_peer, fs_args, long=False, burst=not args.quick
                )
        finally:
            daemon.stop()
            await ami.stop()
            await fs.stop()
    return out


def summary(r: dict[str, object]) -> str:
    keys = ("calls", "failures", "calls_per_s", "turnaround_p99_ms", "turnaround_max_ms",
            "digit_to_record_p99_ms", "cpu_ms_per_call", "tx_per_call", "rss_end_mib",
            "store_commit_slow")  # fmt: skip
    return " ".join(f"{k}={r[k]}" for k in keys)


def print_table(title: str, results: dict[str, dict[str, object]]) -> None:
    print(f"\n{title}")
    print(
        f"{'round':<8} {'calls':>6} {'fail':>5} {'peak':>5} {'calls/s':>8} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'max ms':>8} {'dig>rec p99':>11} {'cpu ms/call':>11}"
        f" {'tx/call':>7} {'reads/call':>10} {'rss MiB':>13}"
    )
    for name, r in results.items():
        print(
            f"{name:<8} {r['calls']:>6} {r['failures']:>5} {r['peak_concurrent']:>5}"
            f" {r['calls_per_s']:>8} {r['turnaround_p50_ms']:>7} {r['turnaround_p99_ms']:>7}"
            f" {r['turnaround_max_ms']:>8} {r['digit_to_record_p99_ms']:>11}"
            f" {r['cpu_ms_per_call']:>11} {r['tx_per_call']:>7} {r['reads_per_call']:>10}"
            f" {str(r['rss_start_mib']) + '->' + str(r['rss_end_mib']):>13}"
        )
    print(
        "daemon CPU ms per call by thread: "
        + " ".join(f"{k:>12}" for k in THREADS)
        + f" {'(in kernel)':>12}"
    )
    for name, r in results.items():
        by = r["cpu_ms_per_call_by_thread"]
        print(
            f"  {name:<31}"
            + " ".join(f"{by[k]:>12}" for k in THREADS)  # type: ignore[index]
            + f" {r.get('cpu_sys_ms_per_call', '-'):>12}"
        )
    print("times scheduled in per call by thread:" + " ".join(f"{k:>12}" for k in THREADS))
    for name, r in results.items():
        by = r["scheduled_per_call_by_thread"]
        print(f"  {name:<36}" + " ".join(f"{by[k]:>12}" for k in THREADS))  # type: ignore[index]
    long = results.get("long")
    if long and long.get("windows"):
        print("long round by window: t_s completed p99_ms cpu_ms/call rss_MiB")
        for w in long["windows"]:  # type: ignore[union-attr]
            print(
                f"  {w['t_s']:>5} {w['completed']:>9} {w['p99_ms']:>6} {w['cpu_ms_per_call']:>11}"
                f" {w['rss_mib']:>7}"
            )


def long_figures(
    long: dict[str, object] | None, call_s: float, window_s: float
) -> tuple[float, float]:
    """Throughput ratio last/first full window after warm-up (a window that starts once the
    first calls can have ended, one call length in), and RSS growth from the end of that first
    window to the end of the round."""
    if not long or not long.get("windows"):
        return float("nan"), float("nan")
    windows = [w for w in long["windows"] if w["t_s"] - window_s >= call_s]  # type: ignore[union-attr]
    if len(windows) < 2:
        return float("nan"), float("nan")
    first, last = windows[0], windows[-1]
    ratio = round(last["completed"] / max(first["completed"], 1), 3)
    return ratio, round(last["rss_mib"] - first["rss_mib"], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 1 min)")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL (Asterisk)")
    parser.add_argument("--rate", type=float, default=100.0, help="calls per second")
    parser.add_argument("--call-s", type=float, default=None, help="prompt + talk per call")
    parser.add_argument("--burst", type=int, default=None)
    parser.add_argument("--steady-s", type=float, default=None)
    parser.add_argument("--long-s", type=float, default=None)
    parser.add_argument("--no-long", action="store_true", help="skip the long round")
    parser.add_argument("--no-one-core", action="store_true", help="skip the one-core round")
    parser.add_argument(
        "--ami-user",
        choices=("shipped", "all"),
        default="shipped",
        help="the daemon's AMI user: ours (read=call, event filters) or read=all, no filter",
    )
    parser.add_argument(
        "--daemon-cpu",
        type=int,
        default=None,
        metavar="N",
        help="pin the daemon's threads to CPU N for every round (as systemd's CPUAffinity=N "
        "would), the load generator to the other CPUs",
    )
    args = parser.parse_args()
    cpus = os.sched_getaffinity(0)
    if args.daemon_cpu is not None and (args.daemon_cpu not in cpus or len(cpus) < 2):
        parser.error(
            f"--daemon-cpu {args.daemon_cpu}: expected one of the CPUs {sorted(cpus)}, with "
            "another left for the load generator"
        )
    raise_fd_limit()
    load0 = loadavg()
    all_results: dict[str, dict[str, object]] = {}
    print("SQLite", flush=True)
    on_sqlite = asyncio.run(
        whole_daemon(args, None, freeswitch=True, one_core_round=not args.no_one_core)
    )
    all_results["sqlite"] = on_sqlite["asterisk"]
    core = on_sqlite.get("one_core")
    all_results["freeswitch_sqlite"] = on_sqlite["freeswitch"]
    if args.postgres:
        args.no_long = True
        with rig.postgres() as url:
            print("PostgreSQL", flush=True)
            all_results["postgresql"] = asyncio.run(whole_daemon(args, url, False))["asterisk"]
    steady = all_results["sqlite"]["steady"]
    limits = {
        "fastagi_alone": fastagi_alone(int(steady["calls"])),  # type: ignore[arg-type]
        "store_floor": store_floor(int(steady["calls"])),  # type: ignore[arg-type]
        "at_steady_rate": parts_alone(args),
    }
    load1 = loadavg()
    call_s = call_seconds(args)
    titles = {
        "sqlite": "Asterisk (FastAGI + AMI), SQLite",
        "freeswitch_sqlite": "FreeSWITCH (ESL; turnaround = the dialogue less the prompt), SQLite",
        "postgresql": "Asterisk (FastAGI + AMI), PostgreSQL (fsync=off, as the tests run it)",
    }
    for db, results in all_results.items():
        print_table(f"whole daemon, {titles[db]}", results)  # type: ignore[arg-type]
    if core:
        print_one_core(core)
    print("\nthe limit, same number of calls:")
    fa, sf = limits["fastagi_alone"], limits["store_floor"]
    print(f"  FastAGI server alone (agi_load consent script, no store): {fa}")
    print(f"  bare SQLAlchemy Core insert of one call's rows, one transaction per call: {sf}")
    parts = limits["at_steady_rate"]
    print_parts(parts, steady["cpu_ms_per_call"])  # type: ignore[arg-type]
    print(f"load average before {' '.join(load0)}, after {' '.join(load1)} (2 shared cores)")
    print(f"AMI user: {args.ami_user} (see bench/_asterisk_peer.py)")
    if args.daemon_cpu is not None:
        print(f"the daemon's threads pinned to CPU {args.daemon_cpu} (--daemon-cpu)")
    window_s = plan(args)["long"]["window_s"]
    ratio, growth = long_figures(all_results["sqlite"].get("long"), call_s, window_s)  # type: ignore[arg-type]
    figures = {
        "bench": "daemon_load",
        "quick": args.quick,
        "ami_user": args.ami_user,
        "daemon_cpu": args.daemon_cpu,
        "steady_p99_ms": steady["turnaround_p99_ms"],
        "steady_max_ms": steady["turnaround_max_ms"],
        "digit_to_record_p99_ms": steady["digit_to_record_p99_ms"],
        "cpu_ms_per_call": steady["cpu_ms_per_call"],
        "cpu_ms_per_call_by_thread": steady["cpu_ms_per_call_by_thread"],
        "cpu_sys_ms_per_call": steady["cpu_sys_ms_per_call"],
        "scheduled_per_call_by_thread": steady["scheduled_per_call_by_thread"],
        "calls_per_s": steady["calls_per_s"],
        "tx_per_call": steady["tx_per_call"],
        "long_throughput_ratio": ratio,
        "rss_growth_mib": growth,
        "one_core_calls_per_s": core["calls_per_s"] if core else None,
        "one_core_top_completed_per_s": core["top_completed_per_s"] if core else None,
        "one_core_top_cpu_ms_per_call": core["top_cpu_ms_per_call"] if core else None,
        "parts_alone_cpu_ms_per_call": parts["sum_cpu_ms_per_call"],
        "results": all_results,
        "one_core": core,
        "limits": limits,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "goals": GOALS,
    }
    fs_steady = all_results["freeswitch_sqlite"]["steady"]
    figures["esl_digit_to_record_p99_ms"] = fs_steady["digit_to_record_p99_ms"]  # type: ignore[index]
    figures["esl_cpu_ms_per_call"] = fs_steady["cpu_ms_per_call"]  # type: ignore[index]
    if "postgresql" in all_results:
        pg = all_results["postgresql"]["steady"]
        figures["pg_steady_p99_ms"] = pg["turnaround_p99_ms"]  # type: ignore[index]
        figures["pg_steady_max_ms"] = pg["turnaround_max_ms"]  # type: ignore[index]
        figures["pg_digit_to_record_p99_ms"] = pg["digit_to_record_p99_ms"]  # type: ignore[index]
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
