"""Test helpers for the recorder: a store with key epochs, a finalizer, WAV files, recordings."""

from __future__ import annotations

import os
import uuid
import wave
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from callconsent.app import App
from recorder.finalize.finalizer import Finalizer, FinalizerSettings
from recorder.vault.directory import Vault, Writer
from recorder.vault.expiry import RetentionRule, epochs_between
from recorder.vault.keystore import KeyStore, PrivateKeys

PASSPHRASE = b"correct horse battery staple"
TEST_SCRYPT_N = 2**10  # the real cost (2**17) is paid by the CLI tests


def files_in(directory: Path) -> list[str]:
    """Every file under ``directory`` (the vault's temp directory too), by relative path."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def write_wav(path: Path, seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """A WAV of noise-like audio (incompressible, like real speech after encryption tests)."""
    frames = os.urandom(int(seconds * rate) * channels * 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path.read_bytes()


def make_keys(app: App, weeks: int = 20, now: datetime | None = None) -> PrivateKeys:
    store = KeyStore(app.keydir, app.db, app.audit_ctx)
    keys = store.init(PASSPHRASE, scrypt_n=TEST_SCRYPT_N)
    now = now or datetime.now(UTC)
    keys.ensure_epochs(epochs_between(now, now + timedelta(weeks=weeks)), actor="test")
    return keys


@dataclass
class Rig:
    app: App
    finalizer: Finalizer
    keys: PrivateKeys

    @property
    def spool(self) -> Path:
        return self.app.spool.path

    def new_recording(
        self,
        fmt: str = "wav",
        channels: int = 1,
        rate: int | None = 8000,
        ended: bool = True,
        category: str = "default",
    ) -> tuple[str, Path]:
        """A call with one registered recording (state ``recording``); returns id and path."""
        ledger = self.app.ledger
        call = ledger.open_call(
            pbx="asterisk",
            pbx_call_id=str(uuid.uuid4())[:20],
            campaign="sales",
            number="+4915112345678",
        )
        rid = str(uuid.uuid4())
        path = self.app.spool.path_for(rid, fmt)
        ledger.recording_started(
            call.id,
            rid,
            spool_path=str(path),
            fmt=fmt,
            channels=channels,
            sample_rate=rate,
            retention_category=category,
        )
        if ended:
            ledger.call_ended(call.id)
        return rid, path


def make_rig(
    app: App,
    *,
    write: Writer = os.write,
    settings: FinalizerSettings | None = None,
    retention: RetentionRule | None = None,
    weeks: int = 20,
) -> Rig:
    keys = make_keys(app, weeks=weeks)
    finalizer = Finalizer(
        app.ledger,
        app.spool,
        Vault(app.config.vault_dir, write=write),
        keys.store,
        retention or RetentionRule(),
        settings or FinalizerSettings(settle_s=5, not_final_retries=(0.01,)),
        allow_root=True,
    )
    finalizer.vault.ensure()
    app.ledger.sink = finalizer
    return Rig(app, finalizer, keys)
