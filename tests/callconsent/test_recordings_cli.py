"""The keys and recordings commands as real processes, run as an unprivileged account (as the
daemon's account would: the finalizer refuses root). Under root they run as that account
(tests/support/daemon_account.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import daemon_account
import pytest
from recstore import write_wav

from recorder.vault.expiry import epoch_id

ROOT = os.geteuid() == 0
PASS = "a long test passphrase"
NUMBER = "0151 1234567"


pytestmark = pytest.mark.skipif(
    ROOT and not daemon_account.interpreter_readable(),
    reason="under root the CLI runs as the daemon's account, who cannot read this interpreter",
)


class Cli:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "callconsent.toml"
        self.config.write_text(
            '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n\n'
            "[retention]\ndefault_days = 30\ncategories = { sales = 90 }\n\n"
            '[policies.sales]\nretention_category = "sales"\n'
        )
        if ROOT:
            os.chown(workdir, daemon_account.UID, daemon_account.GID)
            os.chown(self.config, daemon_account.UID, daemon_account.GID)

    def __call__(
        self, *args: str, passphrase: str | None = PASS
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CALLCONSENT_KEY_PASSPHRASE"}
        if passphrase is not None:
            env["CALLCONSENT_KEY_PASSPHRASE"] = passphrase
        return subprocess.run(
            [sys.executable, "-m", "callconsent", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
            user=daemon_account.NAME if ROOT else None,
            group=daemon_account.GROUP if ROOT else None,
            extra_groups=[] if ROOT else None,
        )

    def ok(self, *args: str, **kw: str | None) -> str:
        done = self(*args, **kw)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def wav(self, name: str, seconds: float, rate: int = 8000, channels: int = 1) -> Path:
        path = self.workdir / name
        write_wav(path, seconds, rate, channels)
        return self.give(path)

    def give(self, path: Path) -> Path:
        """Make a file the test wrote the CLI's (whatever the test process's umask)."""
        if ROOT:
            os.chown(path, daemon_account.UID, -1)
        return path


@pytest.fixture
def cli() -> Iterator[Cli]:
    path = Path(tempfile.mkdtemp(prefix="callconsent-cli-"))
    path.chmod(0o755)
    yield Cli(path)
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def keyed(cli: Cli) -> Cli:
    out = cli.ok("keys", "init")
    assert "created" in out and "epochs" in out
    return cli


def test_keys_init_list_rotate_export(keyed: Cli) -> None:
    listing = json.loads(keyed.ok("keys", "list", "--json"))
    assert not listing["runway_low"] and len(listing["epochs"]) > 30  # 90 days + 26 weeks
    assert {e["private_key"] for e in listing["epochs"]} == {"present"}
    assert "no epoch to add" in keyed.ok("keys", "rotate")
    assert "wrong passphrase" in keyed("keys", "rotate", passphrase="not the passphrase").stderr
    assert keyed("keys", "init").returncode != 0  # never over an existing store
    keys = keyed.workdir / "data" / "keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in keys.iterdir()} == {"0o600"}
    exported = json.loads(keyed.ok("keys", "export-public", "--reason", "backup"))
    assert len(exported["epochs"]) == len(listing["epochs"])
    assert keyed("keys", "export-public").returncode == 2  # --reason is mandatory


def test_a_key_file_with_loose_modes_is_refused(cli: Cli) -> None:
    key = cli.workdir / "store.key"
    key.write_bytes(os.urandom(32))
    cli.give(key).chmod(0o644)
    refused = cli("keys", "init", "--key-file", str(key), passphrase=None)
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
    key.chmod(0o600)
    cli.ok("keys", "init", "--key-file", str(key), passphrase=None)
    cli.ok("keys", "rotate", "--key-file", str(key), passphrase=None)


def test_import_decrypt_verify_round_trip_on_both_wav_kinds(keyed: Cli) -> None:
    mono = keyed.wav("mono.wav", 5, 8000, 1)
    stereo = keyed.wav("stereo.wav", 2, 48000, 2)
    originals = [mono.read_bytes(), stereo.read_bytes()]
    recorded = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    expires = recorded + timedelta(days=90)  # the sales category
    at = recorded.astimezone(timezone(timedelta(hours=1))).isoformat()  # any zone will do
    out = keyed.ok(
        "recordings", "import", str(mono), str(stereo), "--legal-basis", "consent",
        "--campaign", "sales", "--number", NUMBER, "--recorded-at", at,
        "--delete-source", "--json",
    )  # fmt: skip
    imported = json.loads(out)
    assert [i["source_deleted"] for i in imported] == [True, True]
    assert not mono.exists() and not stereo.exists()
    listing = json.loads(keyed.ok("recordings", "list", "--json", "--number", "+49 151 1234567"))
    assert {r["id"] for r in listing} == {i["recording_id"] for i in imported}
    assert {r["expires_at"] for r in listing} == {expires.isoformat()}
    assert {r["key_epoch"] for r in listing} == {epoch_id(expires)}
    assert keyed.ok("recordings", "list", "--json", "--campaign", "other") == "[]\n"
    for item, original in zip(imported, originals, strict=True):
        target = keyed.workdir / f"{item['recording_id']}.wav"
        keyed.ok("recordings", "decrypt", item["recording_id"], "-o", str(target), "--reason", "t")
        assert target.read_bytes() == original
        assert oct(target.stat().st_mode & 0o777) == "0o600"
    shown = json.loads(
        keyed.ok("recordings", "show", imported[0]["recording_id"], "--json", "--reason", "dpo")
    )
    assert shown["number"] == "…67" and NUMBER.replace(" ", "") not in json.dumps(shown)
    assert "2 ok, 0 failed" in keyed.ok("recordings", "verify", "--all")
    audit = keyed.ok("audit", "verify")
    assert "chain intact" in audit


def test_tampering_is_reported_and_decrypt_writes_nothing(keyed: Cli) -> None:
    wav = keyed.wav("a.wav", 10)
    rid = keyed.ok("recordings", "import", str(wav), "--legal-basis", "contract").strip()
    ct = next((keyed.workdir / "data" / "recordings").glob("*.ccrec"))
    data = bytearray(ct.read_bytes())
    data[-50] ^= 0x04
    ct.write_bytes(bytes(data))
    verify = keyed("recordings", "verify", rid)
    assert verify.returncode == 1 and "0 ok, 1 failed" in verify.stdout
    target = keyed.workdir / "out.wav"
    failed = keyed("recordings", "decrypt", rid, "-o", str(target), "--reason", "t")
    assert failed.returncode == 1 and "nothing was written" in failed.stderr
    assert not target.exists() and not list(keyed.workdir.glob(".out.wav*"))
    wrong = keyed(
        "recordings", "decrypt", rid, "-o", str(target), "--reason", "t", passphrase="x" * 20
    )
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    assert keyed("recordings", "decrypt", rid, "-o", str(target)).returncode == 2  # no --reason


def test_import_refuses_what_is_not_a_closed_wav_or_already_expired(keyed: Cli) -> None:
    bad = keyed.workdir / "notes.txt"
    bad.write_text("not audio")
    keyed.give(bad)
    done = keyed("recordings", "import", str(bad), "--legal-basis", "consent")
    assert done.returncode == 1 and "RIFF" in done.stderr
    old = keyed.wav("old.wav", 1)
    done = keyed(
        "recordings", "import", str(old), "--legal-basis", "consent",
        "--recorded-at", "2020-01-01T00:00:00Z",
    )  # fmt: skip
    assert done.returncode == 1 and "retention (30 days" in done.stderr and old.exists()
    assert json.loads(keyed.ok("recordings", "list", "--json")) == []


@pytest.mark.skipif(not ROOT, reason="checks the refusal to run as root")
def test_import_as_root_where_the_daemons_account_cannot_reach_is_refused(tmp_path: Path) -> None:
    """Started as root, import acts as the daemon's account (tests/callconsent/
    test_root_commands.py); where that account cannot reach the config (pytest's 0700 temp
    dir), it refuses at once, naming the account and what blocks it, and imports nothing."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\ndata_dir = "data"\n')
    wav = tmp_path / "a.wav"
    write_wav(wav, 1)
    done = subprocess.run(
        [sys.executable, "-m", "callconsent", "--config", str(cfg), "recordings", "import",
         str(wav), "--legal-basis", "consent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "the account callconsent cannot read" in done.stderr or (
        "refusing to run as root, and the account 'callconsent' does not exist" in done.stderr
    )
    assert wav.exists()
