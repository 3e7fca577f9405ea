"""The crash matrix: the finalizer is SIGKILLed at each step in a real subprocess, then a
restarted one reconciles. Afterwards every recording is encrypted exactly once (or still
pending), none is lost, no plaintext of an encrypted or discarded recording remains, and no
orphan ciphertext or temp file remains."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from recstore import Rig, make_rig, write_wav

from callconsent.app import App
from recorder.store import audit
from recorder.store.models import AuditEntry, Recording
from recorder.vault import directory as vault_mod

SCRIPT = Path(__file__).resolve().parents[2] / "support" / "crashrun.py"
STEPS = ["opened", "mid_encrypt", "encrypted", "renamed", "committed", "unlinked"]


def run(config: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), str(config)]
    if crash_at:
        cmd += ["--crash-at", crash_at]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)


def check_invariants(
    rig: Rig, originals: dict[str, bytes], tmp_path: Path, recovered: bool = True
) -> None:
    """Nothing lost, ever; after recovery also nothing left over."""
    app = rig.app
    vault_dir = app.config.vault_dir
    with app.db.read() as s:
        rows = {r.id: r for r in s.scalars(sa.select(Recording))}
        encrypted_audits = [
            sid
            for sid in s.scalars(
                sa.select(AuditEntry.subject_id).where(AuditEntry.action == "recording.encrypted")
            )
        ]
        assert audit.verify(s).ok
    for rid, original in originals.items():
        rec = rows[rid]
        plaintext = Path(rec.spool_path)
        if rec.state == "encrypted":
            assert not (recovered and plaintext.exists()), f"{rid}: plaintext remains"
            assert encrypted_audits.count(rid) == 1, f"{rid}: not encrypted exactly once"
            out = tmp_path / f"{rid}.out"
            _, digest = vault_mod.decrypt_to(
                Path(rec.ciphertext_path), rid, rig.keys.private_key, out
            )
            assert out.read_bytes() == original and digest == rec.plaintext_sha256
        elif rec.state == "closed":
            assert plaintext.read_bytes() == original, f"{rid}: pending but its audio changed"
        else:
            assert rec.state == "discarded"
            assert not (recovered and plaintext.exists()), f"{rid}: discarded audio remains"
    if not recovered:
        return
    temp_dir = vault_dir / vault_mod.TEMP_DIR
    left = [*vault_dir.iterdir(), *(temp_dir.iterdir() if temp_dir.exists() else [])]
    assert not [p.name for p in left if p.name.endswith(".tmp")], "temp left"
    stored = {p.name.removesuffix(".ccrec") for p in vault_dir.glob("*.ccrec")}
    assert stored == {r for r, rec in rows.items() if rec.state == "encrypted"}, "orphans"


@pytest.fixture
def rig(app: App) -> Rig:
    r = make_rig(app)
    app.ledger.sink = None  # closes are only recorded here; the subprocess finalizes
    return r


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_each_step_then_reconciled(
    rig: Rig, config_file: Path, tmp_path: Path, step: str
) -> None:
    originals = {}
    victim, path = rig.new_recording()
    originals[victim] = write_wav(path, 10)  # > one segment, so mid_encrypt happens
    bystander, other = rig.new_recording()
    originals[bystander] = write_wav(other, 2)
    for rid in originals:
        rig.app.ledger.recording_closed(rid)

    crashed = run(config_file, "process", victim, crash_at=step)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    check_invariants(rig, originals, tmp_path, recovered=False)  # nothing lost

    restarted = run(config_file, "reconcile")
    assert restarted.returncode == 0, restarted.stderr
    check_invariants(rig, originals, tmp_path)
    with rig.app.db.read() as s:
        assert {s.get(Recording, r).state for r in originals} == {"encrypted"}


@pytest.mark.parametrize("state", ["recording", "closed", "encrypted"])
def test_killed_while_destroying_a_discarded_recording(
    rig: Rig, config_file: Path, tmp_path: Path, state: str
) -> None:
    rid, path = rig.new_recording()
    original = write_wav(path, 10)
    if state != "recording":
        rig.app.ledger.recording_closed(rid)
    if state == "encrypted":
        assert run(config_file, "process", rid).returncode == 0
        assert rig.finalizer.vault.path_for(rid).exists()
    crashed = run(config_file, "discard", rid, crash_at="destroy")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    with rig.app.db.read() as s:
        assert s.get(Recording, rid).state == "discarded"  # the decision was committed
    restarted = run(config_file, "reconcile")
    assert restarted.returncode == 0, restarted.stderr
    check_invariants(rig, {rid: original}, tmp_path)
    assert not path.exists() and not rig.finalizer.vault.path_for(rid).exists()
