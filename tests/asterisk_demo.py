"""``make demo``: callconsent with Asterisk, for someone without a PBX.

Starts ``callconsent serve`` (embedded defaults, plus ``[asterisk] enabled``) as its own
process, lets the simulated Asterisk of the test suite drive three consent calls through it
over real sockets (FastAGI and AMI) — accept, decline, silence — then stops the daemon and
prints what it kept: the consent evidence of each call, the recordings, and the audit chain.

Run from the repository: ``make demo`` (or ``.venv/bin/python tests/asterisk_demo.py``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from asterisk_sim import SimAsterisk, hangup, press  # noqa: E402
from asterisk_sim_ami import AmiUser  # noqa: E402

from agi.dialplan import DialplanSettings, render  # noqa: E402
from callconsent import config as config_mod  # noqa: E402
from callconsent.app import App  # noqa: E402
from callconsent.cli import main as cli  # noqa: E402
from recorder.models import Recording  # noqa: E402

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


def daemon_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("callconsent")
    except KeyError:
        sys.exit("demo: running as root needs the 'callconsent' account (make run creates it)")


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
    await asyncio.sleep(0.5)  # the daemon closes recordings once their header is final
    return keys


def recording_audio(app: App, rec: Recording) -> tuple[str, Path] | None:
    """Where to hear a recording. Today the plaintext in the spool; when the recorder's
    finalizer has encrypted it (issue 5), decrypt ``rec.ciphertext_path`` here instead."""
    path = Path(rec.spool_path)
    return ("plaintext in the spool", path) if path.exists() else None


def report(cfg: Path, keys: dict[str, str]) -> None:
    app = App.open(config_mod.load(cfg))
    try:
        for name, key in keys.items():
            ref = app.ledger.find_call("asterisk", key)
            assert ref is not None
            print(f"\n== call '{name}' (linkedid {key}): consent status {ref.consent_status}")
            with app.db.read() as s:
                from sqlalchemy import select

                from recorder.models import ConsentRecord

                rows = s.scalars(select(ConsentRecord).where(ConsentRecord.call_id == ref.id))
                for ev in rows:
                    digits = ",".join(d["digit"] for d in ev.digits or []) or "-"
                    print(
                        f"   evidence {ev.kind}: status={ev.status} method={ev.method} "
                        f"basis={ev.legal_basis} attempts={ev.attempts} digits={digits} "
                        f"prompt={ev.prompt_id} sha256={(ev.prompt_sha256 or '-')[:16]}…"
                    )
            recordings = app.ledger.recordings_of_call(ref.id)
            if not recordings:
                print("   recordings: none (the policy allows none)")
            for rec in recordings:
                audio = recording_audio(app, rec)
                line = f"   recording {rec.id}: {rec.state}, {rec.format}"
                if audio is not None:
                    with wave.open(str(audio[1])) as w:
                        seconds = w.getnframes() / w.getframerate()
                    line += f", {seconds:.1f} s, {audio[0]}: {audio[1]}"
                print(line)
        print()
        cli(["--config", str(cfg), "audit", "verify"])
    finally:
        app.close()


async def demo() -> None:
    base = Path(tempfile.mkdtemp(prefix="callconsent-demo-"))
    base.chmod(0o755)
    sim = SimAsterisk(speed=20.0, ami_users={AMI_USER: AmiUser(AMI_SECRET, {"call"})})
    await sim.start()
    agi_port = free_port()
    cfg = write_config(base, agi_port, sim.ami.port)
    print(f">>> demo directory {base}")
    print(">>> building the prompts (espeak-ng, English)")
    if shutil.which("espeak-ng") is None:
        sys.exit("demo: espeak-ng is missing (make installs it as root; apt-get install espeak-ng)")
    cli(["--config", str(cfg), "prompts", "build", "--language", "en"])
    user = daemon_user()
    if user is not None:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(base)], check=True)
    print(">>> starting callconsent serve")
    proc = await asyncio.to_thread(start_daemon, cfg)
    try:
        await sim.wait_until(lambda: AMI_USER in sim.ami.logged_in, wait_s=10)
        print(">>> three calls through the simulated Asterisk")
        spool = config_mod.load(cfg).spool_dir
        keys = await drive(cfg, sim, agi_port, spool)
    finally:
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
