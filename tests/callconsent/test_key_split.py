"""The private keys off the PBX host (issue 14, point 5): the keys host creates the epochs and
exports their public halves; the PBX host imports them, records and encrypts without ever
holding a private key; decrypt and verify run where the private keys are."""

from __future__ import annotations

import json
from collections.abc import Iterator

import daemon_account
import pytest
from cli_host import Host
from recstore import write_wav

pytestmark = pytest.mark.skipif(
    daemon_account.ROOT and not daemon_account.interpreter_readable(),
    reason="the daemon's account cannot read this interpreter",
)


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    keys, pbx = Host("keyshost"), Host("pbx1")
    yield keys, pbx
    keys.remove()
    pbx.remove()


def test_a_pbx_host_with_only_public_keys_records_and_the_keys_host_decrypts(
    hosts: tuple[Host, Host],
) -> None:
    keys, pbx = hosts
    keys.ok("keys", "init")
    exported = keys.dir / "public-keys.json"
    keys.ok("keys", "export-public", "--reason", "to pbx1", "-o", str(exported))
    exported.chmod(0o644)

    # the PBX host: public keys only
    n = len(json.loads(exported.read_text())["epochs"])
    assert f"imported {n} of {n} public keys" in pbx.ok("keys", "import-public", str(exported))
    assert "imported 0 of" in pbx.ok("keys", "import-public", str(exported))  # idempotent
    listing = json.loads(pbx.ok("keys", "list", "--json"))
    assert {e["private_key"] for e in listing["epochs"]} == {"elsewhere"}
    assert not listing["runway_low"]
    original = write_wav(pbx.dir / "call.wav", 2.0)
    (pbx.dir / "call.wav").chmod(0o644)
    imported = json.loads(pbx.ok("recordings", "import", str(pbx.dir / "call.wav"),
                                 "--legal-basis", "consent", "--json"))  # fmt: skip
    rid = imported[0]["recording_id"]
    assert list((pbx.data / "keys").glob("epoch-*")) == []  # no private key ever came here
    assert "keystore.json" not in {p.name for p in (pbx.data / "keys").iterdir()}
    refused = pbx("recordings", "decrypt", rid, "-o", str(pbx.dir / "out.wav"), "--reason", "x")
    assert refused.returncode != 0 and "no key store" in refused.stderr

    # the keys host reads the PBX host's store (a shared PostgreSQL, or a copy of its SQLite)
    # with its own key directory
    reader = Host(
        "keyshost-reader",
        f'\n[database]\nurl = "sqlite:///{pbx.data / "callconsent.db"}"\n'
        f'\n[keys]\ndir = "{keys.data / "keys"}"\n',
    )
    try:
        out = reader.dir / "call.wav"
        reader.ok("recordings", "decrypt", rid, "-o", str(out), "--reason", "test")
        assert out.read_bytes() == original
        assert "1 ok, 0 failed" in reader.ok("recordings", "verify", "--all")
    finally:
        reader.remove()


def test_an_export_from_another_key_store_is_refused(hosts: tuple[Host, Host]) -> None:
    keys, pbx = hosts
    keys.ok("keys", "init")
    pbx.ok("keys", "init")  # a second, unrelated key store: same weeks, other keys
    exported = keys.dir / "public-keys.json"
    keys.ok("keys", "export-public", "--reason", "to pbx1", "-o", str(exported))
    exported.chmod(0o644)
    done = pbx("keys", "import-public", str(exported))
    assert done.returncode == 1
    assert "exists here with another public key" in done.stderr


def test_a_damaged_export_is_refused_before_anything_is_published(
    hosts: tuple[Host, Host],
) -> None:
    keys, pbx = hosts
    keys.ok("keys", "init")
    exported = keys.dir / "public-keys.json"
    keys.ok("keys", "export-public", "--reason", "to pbx1", "-o", str(exported))
    doc = json.loads(exported.read_text())
    doc["epochs"][-1]["public_key"] = "00" * 32  # no longer matches its fingerprint
    exported.write_text(json.dumps(doc))
    exported.chmod(0o644)
    done = pbx("keys", "import-public", str(exported))
    assert done.returncode == 1 and "does not match its fingerprint" in done.stderr
    assert json.loads(pbx.ok("keys", "list", "--json"))["epochs"] == []
