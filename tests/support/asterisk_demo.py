"""``make demo``: callconsent with Asterisk, for someone without a PBX.

Creates a key store, starts ``callconsent serve`` (embedded defaults, plus ``[asterisk]
enabled``) as its own process, lets the simulated Asterisk of the test suite drive three
consent calls through it over real sockets (FastAGI and AMI) — accept, decline, silence —
waits for the finalizer to encrypt what was recorded, stops the daemon, and prints what it
kept: the consent evidence of each call, the recordings, one recording decrypted again, and
the audit chain. Started as root, every callconsent command runs as the ``callconsent``
account, as the daemon would.

Run from the repository: ``make demo`` (or ``.venv/bin/python tests/asterisk_demo.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_cli
from asterisk_sim import SimAsterisk, hangup, press
from asterisk_sim_ami import AmiUser

from agi.dialplan import DialplanSettings, render
from callconsent import config as config_mod
from recorder.store.db import Database
from recorder.store.models import Call, ConsentRecord, Recording

PASSPHRASE = "demo passphrase, not for production"
AMI_USER, AMI_SECRET = "callconsent", "demo-secret"
CALLS = {
    "accept": [press("1", "consent", 2.0), hangup("talk", 8.0)],
    "decline": [press("2", "consent", 2.0), hangup("talk", 3.0)],
    "silence": [hangup("talk", 2.0)],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def callconsent(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One CLI command, as the daemon's account when we are root."""
    return daemon_cli.run("demo", cfg, PASSPHRASE, *args, check=check)


def write_config(base: Path, agi_port: int, ami_port: int) -> Path:
    cfg = base / "callconsent.toml"
    cfg.write_text(
        "# the embedded defaults, plus the Asterisk adapter pointed at the simulator\n"
        '[daemon]\ndata_dir = "var"\nnode = "demo"\n\n'
        f"[asterisk]\nenabled = true\nagi_port = {agi_port}\nami_port = {ami_port}\n"
        f'ami_user = "{AMI_USER}"\nami_secret = "{AMI_SECRET}"\n'
    )
    cfg.chmod(0o644)
    return cfg


def start_daemon(cfg: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cfg.parent,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"  daemon | {line.rstrip()}")
        if "event=ready" in line or '"ready"' in line:
            return proc
    sys.exit("demo: the daemon stopped before it was ready")


async def drive(cfg: Path, sim: SimAsterisk, agi_port: int, spool: Path) -> dict[str, str]:
    dialplan = cfg.parent / "dialplan"
    dialplan.mkdir(exist_ok=True)
    for name, text in render(DialplanSettings(agi_port=agi_port, spool=str(spool))).items():
        (dialplan / name).write_text(text)
    sim.load_dialplan(dialplan)
    keys: dict[str, str] = {}
    for name, script in CALLS.items():
        call = await sim.inbound("sales", script, number="+49 30 1234567")
        keys[name] = call.customer.linkedid
        print(
            f"  call {name:8} linkedid={call.customer.linkedid} heard={call.customer.heard} "
            f"CONSENT_STATUS={call.customer.vars.get('CONSENT_STATUS')}"
        )
    return keys


def recordings_in(db: Database) -> list[Recording]:
    with db.read() as s:
        return list(s.scalars(sa.select(Recording)))


async def until_finalized(db: Database, wait_s: float = 60.0) -> None:
    """The finalizer encrypts each closed recording and removes the plaintext."""
    for _ in range(int(wait_s / 0.2)):
        if all(r.state in ("encrypted", "discarded") for r in recordings_in(db)):
            return
        await asyncio.sleep(0.2)
    print("  (the finalizer did not finish in time)")


def report(cfg: Path, keys: dict[str, str]) -> None:
    settings = config_mod.load(cfg)
    db = Database(settings.database_url)
    try:
        for name, key in keys.items():
            with db.read() as s:
                call = s.scalars(sa.select(Call).where(Call.pbx_call_id == key)).one()
                evidence = list(
                    s.scalars(sa.select(ConsentRecord).where(ConsentRecord.call_id == call.id))
                )
                recs = list(s.scalars(sa.select(Recording).where(Recording.call_id == call.id)))
            print(f"\n== call '{name}' (linkedid {key}): consent status {call.consent_status}")
            for ev in evidence:
                digits = ",".join(d["digit"] for d in ev.digits or []) or "-"
                print(
                    f"   evidence {ev.kind}: status={ev.status} method={ev.method} "
                    f"basis={ev.legal_basis} attempts={ev.attempts} digits={digits} "
                    f"prompt={ev.prompt_id} sha256={(ev.prompt_sha256 or '-')[:16]}…"
                )
            if not recs:
                print("   recordings: none (the policy allows none)")
            for rec in recs:
                print(
                    f"   recording {rec.id}: {rec.state}, {rec.format}, plaintext sha256="
                    f"{(rec.plaintext_sha256 or '-')[:16]}…, ciphertext {rec.ciphertext_path}"
                )
                print(f"     plaintext still in the spool: {Path(rec.spool_path).exists()}")
                if rec.state == "encrypted":
                    decrypt(cfg, rec)
    finally:
        db.dispose()
    print()
    print("  " + callconsent(cfg, "audit", "verify", check=False).stdout.strip())


def decrypt(cfg: Path, rec: Recording) -> None:
    out = cfg.parent / f"decrypted-{rec.id}.wav"
    done = callconsent(
        cfg, "recordings", "decrypt", rec.id, "-o", str(out), "--reason", "make demo", check=False
    )
    if done.returncode != 0:
        print(f"     decrypt failed: {done.stderr.strip()}")
        return
    with wave.open(str(out)) as w:
        seconds = w.getnframes() / w.getframerate()
        shape = f"{w.getnchannels()} ch, {w.getframerate()} Hz"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    same = "matches" if digest == rec.plaintext_sha256 else "DIFFERS from"
    print(f"     decrypted: {out} ({seconds:.1f} s, {shape}); sha256 {same} the stored one")


async def demo() -> None:
    base = daemon_cli.workdir("demo")
    if shutil.which("espeak-ng") is None:
        sys.exit("demo: espeak-ng is missing (make installs it as root; apt-get install espeak-ng)")
    sim = SimAsterisk(speed=20.0, ami_users={AMI_USER: AmiUser(AMI_SECRET, {"call"})})
    await sim.start()
    agi_port = free_port()
    cfg = write_config(base, agi_port, sim.ami.port)
    print(f">>> demo directory {base}")
    print(">>> creating the key store, building the prompts (espeak-ng, English)")
    callconsent(cfg, "keys", "init")
    callconsent(cfg, "prompts", "build", "--language", "en")
    print(">>> starting callconsent serve")
    proc = await asyncio.to_thread(start_daemon, cfg)
    settings = config_mod.load(cfg)
    db = Database(settings.database_url)
    try:
        await sim.wait_until(lambda: AMI_USER in sim.ami.logged_in, wait_s=10)
        print(">>> three calls through the simulated Asterisk")
        keys = await drive(cfg, sim, agi_port, settings.spool_dir)
        await until_finalized(db)
    finally:
        db.dispose()
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        for line in rest.splitlines():
            print(f"  daemon | {line}")
        await sim.stop()
    print(">>> what callconsent kept")
    report(cfg, keys)
    print(f"\n(everything is in {base}; remove it when done)")


if __name__ == "__main__":
    asyncio.run(demo())
