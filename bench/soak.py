"""Soak: ``callconsent serve`` (its own process) with a simulated Asterisk and a simulated
FreeSWITCH, at a steady rate of consent calls with recordings, for a bounded time.

The mix, alternating PBXs: accept (recorded, then hung up while talking), decline, silence
(no answer: not recorded), withdrawal (accept, then the caller's withdraw key while talking:
the recording is discarded), and on Asterisk an accepted call bridged to an agent. Hangups
arrive as the simulators send them in production (AMI ``Hangup``/``MixMonitor`` events,
FreeSWITCH ``RECORD_STOP``/``CHANNEL_HANGUP_COMPLETE`` on inbound ESL).

At the end, every call is accounted for from the store: calls completed, decisions stored,
recordings finalised (encrypted, or discarded after a withdrawal), lost or duplicated (both
must be 0); and per minute: calls, p99 of answer-to-decision and of close-to-encrypted, the
daemon's RSS and open file descriptors. A table, then ONE JSON line.

    .venv/bin/python bench/soak.py --quick        # 1 minute
    .venv/bin/python bench/soak.py                # 15 minutes
    .venv/bin/python bench/soak.py --minutes 5 --rate 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "sim"), str(ROOT / "tests" / "support"), str(ROOT)]

import daemon_cli  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from _common import free_port, rss_mib  # noqa: E402
from asterisk_harness import make_prompts  # noqa: E402
from asterisk_sim import SimAsterisk, hangup, press  # noqa: E402
from asterisk_sim_ami import AmiUser  # noqa: E402
from freeswitch_sim import Caller, FakeFreeSwitch  # noqa: E402

from agi.dialplan import DialplanSettings, render  # noqa: E402
from callconsent import config as config_mod  # noqa: E402
from recorder.store import audit  # noqa: E402
from recorder.store.db import Database  # noqa: E402
from recorder.store.models import Call, ConsentRecord, Recording  # noqa: E402

PASSPHRASE = "soak passphrase, not for production"
AMI_USER, AMI_SECRET = "callconsent", "soak-secret"
ESL_PASSWORD = "ClueCon"
POLICIES = '[policies.care]\nwithdraw_digit = "9"\n'
AST_KINDS = ("accept", "decline", "silence", "withdraw", "agent")
FS_KINDS = ("accept", "decline", "silence")
EXPECTED = {  # kind -> (decision status, final recording state or None)
    "accept": ("granted", "encrypted"),
    "agent": ("granted", "encrypted"),
    "decline": ("declined", None),
    "silence": ("no_input", None),
    "withdraw": ("granted", "discarded"),  # the decision row; a change row says withdrawn
}


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon_cli.run("soak", cfg, PASSPHRASE, *args)


def write_config(base: Path, ports: dict[str, int]) -> Path:
    cfg = base / "callconsent.toml"
    cfg.write_text(
        '[daemon]\ndata_dir = "var"\nnode = "soak"\n\n'
        f"[metrics]\nport = {ports['metrics']}\n\n"
        f"[asterisk]\nenabled = true\nagi_port = {ports['agi']}\nami_port = {ports['ami']}\n"
        f'ami_user = "{AMI_USER}"\nami_secret = "{AMI_SECRET}"\n\n'
        f"[freeswitch]\nenabled = true\noutbound_port = {ports['esl_out']}\n"
        f'esl_port = {ports["esl_in"]}\nesl_password = "{ESL_PASSWORD}"\n\n'
        # after a SIGKILL, what the restart finds is reconciled within seconds, not a minute
        "[recorder]\nreconcile_interval_s = 3\nsettle_s = 2\n\n"
        f"{POLICIES}"
    )
    cfg.chmod(0o644)
    return cfg


class Daemon:
    """``callconsent serve`` in its own process; its log lines counted by level."""

    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cfg.parent,
        )
        self.levels: Counter[str] = Counter()
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            self.proc.kill()
            sys.exit(f"soak: the daemon did not get ready: {self.errors[-5:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split(" ", 3)
            level = parts[1] if len(parts) > 2 else "?"
            self.levels[level] += 1
            if level in ("error", "critical") or "Traceback" in line:
                self.errors.append(line.rstrip()[:300])
            elif level == "warning":
                self.warnings.append(line.rstrip()[:300])
            if "event=ready" in line:
                self.ready.set()

    def sample(self) -> tuple[float, int]:
        """RSS (MiB) and open file descriptors of the daemon, from /proc."""
        pid = self.proc.pid
        return rss_mib(pid), len(os.listdir(f"/proc/{pid}/fd"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


async def asterisk_call(sim: SimAsterisk, kind: str, number: str) -> str:
    scripts = {
        "accept": ("sales", [press("1", "consent", 1.0), hangup("talk", 2.0)], None),
        "decline": ("sales", [press("2", "consent", 1.0), hangup("talk", 1.0)], None),
        "silence": ("sales", [hangup("talk", 1.0)], None),
        "withdraw": (
            "care",
            [press("1", "consent", 1.0), press("9", "talk", 1.0), hangup("talk", 1.0)],
            None,
        ),
        "agent": ("sales", [press("1", "consent", 1.0), hangup("talk", 2.0)], []),
    }
    campaign, script, agent = scripts[kind]
    call = await sim.inbound(campaign, script, number=number, agent_script=agent)
    return call.customer.linkedid


async def freeswitch_call(fs: FakeFreeSwitch, port: int, kind: str, number: str) -> str:
    answers = {"accept": ["1"], "decline": ["2"], "silence": [None]}[kind]
    leg = fs.new_leg("consent", number, socket_path="consent/sales")
    await fs.call(port, leg, Caller(answers))  # type: ignore[arg-type]
    if kind == "accept":
        fs.talk(leg, 1.0)
    await fs.hangup_leg(leg)
    return leg.call_uuid


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def soak(
    minutes: float, rate: float, kills: int = 0, how: signal.Signals = signal.SIGKILL
) -> dict[str, object]:
    base = daemon_cli.workdir("soak")
    user = daemon_cli.daemon_user("soak")
    sim = SimAsterisk(speed=10.0, ami_users={AMI_USER: AmiUser(AMI_SECRET, {"call"})})
    await sim.start()
    fs = FakeFreeSwitch(password=ESL_PASSWORD)
    await fs.start()
    ports = {"agi": free_port(), "ami": sim.ami.port, "esl_out": free_port(), "esl_in": fs.port}
    ports["metrics"] = free_port()
    cfg = write_config(base, ports)
    settings = config_mod.load(cfg)
    make_prompts(settings.prompt_dir, ("en",))
    dialplan = base / "dialplan"
    dialplan.mkdir()
    for name, text in render(
        DialplanSettings(agi_port=ports["agi"], spool=str(settings.spool_dir))
    ).items():
        (dialplan / name).write_text(text)
    sim.load_dialplan(dialplan)
    if user is not None:
        owner = f"{user.pw_uid}:{user.pw_gid}"
        await asyncio.to_thread(subprocess.run, ["chown", "-R", owner, str(base)], check=True)
    cli(cfg, "keys", "init")
    daemon = await asyncio.to_thread(Daemon, cfg)
    db = Database(settings.database_url)
    rng = random.Random(int(os.environ.get("SOAK_SEED", "17")))
    kill_at = sorted(rng.uniform(0.15, 0.75) * minutes * 60 for _ in range(kills))
    killed: list[tuple[float, float]] = []  # (killed at, back at), seconds into the run
    levels: Counter[str] = Counter()
    placed: dict[str, tuple[str, str, float, float, float]] = {}  # id -> pbx, kind, min, t0, t1
    failures: list[str] = []
    samples: list[tuple[float, float, int]] = []
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def one(i: int) -> None:
        t0 = time.monotonic() - started
        minute = t0 // 60
        number = f"+4930{5550000 + i}"
        try:
            if i % 2 == 0:
                kind = AST_KINDS[(i // 2) % len(AST_KINDS)]
                key = await asterisk_call(sim, kind, number)
                placed[key] = ("asterisk", kind, minute, t0, time.monotonic() - started)
            else:
                kind = FS_KINDS[(i // 2) % len(FS_KINDS)]
                key = await freeswitch_call(fs, ports["esl_out"], kind, number)
                placed[key] = ("freeswitch", kind, minute, t0, time.monotonic() - started)
        except Exception as exc:  # a failed call is a figure, not a crash of the soak
            failures.append(f"call {i}: {type(exc).__name__}: {exc}"[:200])

    try:
        await sim.wait_until(lambda: AMI_USER in sim.ami.logged_in, wait_s=15)
        i, next_sample = 0, 0.0
        while (elapsed := time.monotonic() - started) < minutes * 60:
            if elapsed >= next_sample:
                samples.append((elapsed, *daemon.sample()))
                next_sample += 60 if minutes > 2 else 10
            if kill_at and elapsed >= kill_at[0]:
                kill_at.pop(0)
                # SIGKILL: no goodbye, files and transactions cut short; SIGTERM: a stop
                daemon.proc.send_signal(how)
                await asyncio.to_thread(daemon.proc.wait, 60)
                levels.update(daemon.levels)
                daemon = await asyncio.to_thread(Daemon, cfg)
                killed.append((elapsed, time.monotonic() - started))
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        for _ in range(240):  # the finalizer encrypts, discarded audio goes
            with db.read() as s:
                pending = s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Recording)
                    .where(Recording.state.in_(["recording", "closed"]))
                )
            if not pending:
                break
            await asyncio.sleep(0.5)
        samples.append((time.monotonic() - started, *daemon.sample()))
        # plaintext left in the spool with no recording to finalise it is audio lost
        spool_left = [p.name for p in settings.spool_dir.iterdir() if not p.name.startswith(".")]
    finally:
        rc = await asyncio.to_thread(daemon.stop)
        await sim.stop()
        await fs.stop()
    levels.update(daemon.levels)
    figures = account(db, placed, failures, samples, minutes, killed)
    with db.read() as s:
        report = audit.verify(s)
    db.dispose()
    figures |= {
        "spool_leftovers": len(spool_left),
        "daemon_exit": rc,
        "daemon_log_lines": dict(levels),
        "kills": [(round(a, 1), round(b, 1)) for a, b in killed],
        "daemon_errors": daemon.errors[:5],
        "daemon_warnings": daemon.warnings[:5],
        "audit_ok": report.ok,
        "audit_rows": report.rows,
        "dir": str(base),
    }
    return figures


def account(
    db: Database,
    placed: dict[str, tuple[str, str, float, float, float]],
    failures: list[str],
    samples: list[tuple[float, float, int]],
    minutes: float,
    killed: list[tuple[float, float]],
) -> dict[str, object]:
    """Every call placed, from the store. A call that overlapped a SIGKILL may have gone
    unserved (the dialplan's fallback: not recorded), or been decided just before: that is
    allowed; a decision stored twice, a recording not finalised, or one left behind is not."""
    with db.read() as s:
        calls = list(s.scalars(sa.select(Call)))
        evidence = list(s.scalars(sa.select(ConsentRecord)))
        recordings = list(s.scalars(sa.select(Recording)))
    by_key: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_key[c.pbx_call_id].append(c)
    decisions: dict[str, list[ConsentRecord]] = defaultdict(list)
    for e in evidence:
        if e.kind == "decision":
            decisions[e.call_id].append(e)
    recs: dict[str, list[Recording]] = defaultdict(list)
    for r in recordings:
        recs[r.call_id].append(r)
    lost, duplicated, wrong, finalised, expected_recordings = [], [], [], 0, 0
    per_minute: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unserved = 0
    for key, (pbx, kind, minute, t0, t1) in placed.items():
        status, final = EXPECTED[kind]
        rows = by_key.get(key, [])
        hit = any(t0 - 1 <= back and t1 + 1 >= down for down, back in killed)
        if hit and (not rows or not decisions.get(rows[0].id)):
            unserved += 1  # the daemon was down: the call went on unrecorded (fail closed)
            if rows and recs.get(rows[0].id):
                lost.append(f"{kind} {key}: recorded without a decision")
            continue
        if len(rows) != 1:
            (lost if not rows else duplicated).append(f"{pbx} {kind} call {key}: {len(rows)} rows")
            continue
        call = rows[0]
        made = decisions.get(call.id, [])
        if len(made) != 1:
            (lost if not made else duplicated).append(f"{kind} {key}: {len(made)} decisions")
            continue
        if made[0].status != status and not hit:
            wrong.append(f"{kind} {key}: {made[0].status} (expected {status})")
        per_minute[int(minute)]["decision_s"].append(
            (made[0].decided_at - call.started_at).total_seconds()
        )
        got = recs.get(call.id, [])
        if hit and made[0].status == "granted" and not got:
            unserved += 1  # decided, then cut off before the recording began
            continue
        if hit and kind == "withdraw" and got and got[0].state == "encrypted":
            final = "encrypted"  # the withdrawal key was pressed while the daemon was down
        if final is None:
            if got:
                wrong.append(f"{kind} {key}: {len(got)} recordings, none allowed")
            continue
        expected_recordings += 1
        if len(got) != 1:
            (lost if not got else duplicated).append(f"{kind} {key}: {len(got)} recordings")
            continue
        if got[0].state == final:
            finalised += 1
        else:
            lost.append(f"{kind} {key}: recording {got[0].state}, expected {final}")
        if got[0].encrypted_at and got[0].closed_at:
            per_minute[int(minute)]["finalize_s"].append(
                (got[0].encrypted_at - got[0].closed_at).total_seconds()
            )
    warm = samples[len(samples) // 3] if samples else (0.0, 0.0, 0)
    last = samples[-1] if samples else warm
    stray = [c.pbx_call_id for c in calls if c.pbx_call_id not in placed]
    minutes_rows = []
    for m in sorted(per_minute):
        in_minute = [s for s in samples if int(s[0] // 60) == m] or samples[-1:]
        minutes_rows.append(
            {
                "minute": m + 1,
                "calls": len(per_minute[m]["decision_s"]),
                "p99_decision_s": round(p99(per_minute[m]["decision_s"]), 3),
                "p99_finalize_s": round(p99(per_minute[m]["finalize_s"]), 3),
                "rss_mib": round(in_minute[-1][1], 1),
                "open_fds": in_minute[-1][2],
            }
        )
    return {
        "minutes": minutes,
        "calls_placed": len(placed) + len(failures),
        "calls_completed": len(placed),
        "call_failures": failures[:5],
        "decisions_stored": sum(len(v) for v in decisions.values()),
        "recordings_expected": expected_recordings,
        "recordings_finalised": finalised,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "wrong_outcome": len(wrong),
        "unserved_during_kills": unserved,
        "stray_calls": len(stray),
        "examples": (lost + duplicated + wrong)[:5],
        "per_minute": minutes_rows,
        "rss_growth_after_warmup_mib": round(last[1] - warm[1], 1),
        "fd_growth_after_warmup": last[2] - warm[2],
        "samples": [(round(t), round(r, 1), n) for t, r, n in samples],
    }


def print_table(f: dict[str, object]) -> None:
    print(f"soak: {f['minutes']} min, daemon in its own process, Asterisk + FreeSWITCH simulated")
    for key in (
        "calls_placed", "calls_completed", "decisions_stored", "recordings_expected",
        "recordings_finalised", "lost", "duplicated", "wrong_outcome", "stray_calls",
        "unserved_during_kills", "kills", "spool_leftovers",
        "rss_growth_after_warmup_mib", "fd_growth_after_warmup", "audit_ok", "daemon_exit",
    ):  # fmt: skip
        print(f"  {key:22} {f[key]}")
    print(f"  {'daemon log lines':22} {f['daemon_log_lines']}")
    print(f"\n  {'minute':>6} {'calls':>6} {'p99 decision s':>15} {'p99 finalize s':>15} "
          f"{'RSS MiB':>8} {'fds':>5}")  # fmt: skip
    for row in f["per_minute"]:  # type: ignore[attr-defined]
        print(
            f"  {row['minute']:>6} {row['calls']:>6} {row['p99_decision_s']:>15} "
            f"{row['p99_finalize_s']:>15} {row['rss_mib']:>8} {row['open_fds']:>5}"
        )
    print(f"  samples (s, RSS MiB, fds): {f['samples']}")
    lines = f["examples"] + f["daemon_errors"] + f["daemon_warnings"] + f["call_failures"]  # type: ignore[operator]
    for line in lines:
        print(f"  ! {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 minute instead of 15")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--rate", type=float, default=2.0, help="new calls per second")
    ap.add_argument(
        "--kill", type=int, default=0, metavar="N",
        help="SIGKILL the daemon N times at random moments (SOAK_SEED) and restart it",
    )  # fmt: skip
    ap.add_argument("--term", action="store_true", help="with --kill: SIGTERM, not SIGKILL")
    args = ap.parse_args()
    minutes = args.minutes or (1.0 if args.quick else 15.0)
    started = datetime.now()
    how = signal.SIGTERM if args.term else signal.SIGKILL
    figures = asyncio.run(soak(minutes, args.rate, args.kill, how))
    figures["signal"] = how.name if args.kill else None
    figures["started"] = started.isoformat(timespec="seconds")
    print_table(figures)
    print(json.dumps({"bench": "soak", **figures}, default=str))
    ok = figures["lost"] == figures["duplicated"] == figures["wrong_outcome"] == 0
    ok = ok and figures["spool_leftovers"] == 0
    if ok and figures["audit_ok"]:
        shutil.rmtree(str(figures["dir"]), ignore_errors=True)
        sys.exit(0)
    print(f"soak: FAILED; the daemon's files are in {figures['dir']}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
