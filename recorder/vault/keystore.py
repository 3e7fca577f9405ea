"""Key epochs: the public keys recordings are sealed to (in the store, for every PBX host) and
their private keys (files in the key directory, encrypted at rest).

One epoch per ISO week of expiry (see :mod:`recorder.vault.expiry`). The recording daemon only ever
reads public keys from the store. Private keys are AES-256-GCM encrypted under a key derived
with scrypt from a passphrase or a key file (``keystore.json`` holds the salt, the scrypt cost
and a check value, so a wrong passphrase is named as such); the key directory's 0700/0600 modes
are checked on every read (:mod:`recorder.vault.keydir`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import bindparam, select

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import KeyEpoch
from recorder.store.prepared import Prepared, Reading
from recorder.vault import envelope, expiry
from recorder.vault.keydir import KeyDir

PARAMS_NAME = "keystore.json"
SCRYPT_N = 2**17  # 128 MiB, about half a second: paid once per command, not per key
_MAGIC = b"CCKEY1"
_CHECK = b"callconsent key store v1"
_AAD = b"callconsent epoch private key v1\x00"


class KeyStoreError(Exception):
    """The key store cannot do what was asked; the message says what to do."""


class NoEpoch(KeyStoreError):
    """No key epoch covers this expiry: the recording must stay pending."""


@dataclass(frozen=True, slots=True)
class Epoch:
    id: str
    suite: int
    public_key: bytes
    fingerprint: str
    expires_from: datetime
    expires_until: datetime
    destroyed_at: datetime | None
    purpose: str = "expiry"

    @classmethod
    def of(cls, row: KeyEpoch) -> Epoch:
        return cls(
            row.id,
            row.suite,
            row.public_key,
            row.fingerprint,
            row.expires_from,
            row.expires_until,
            row.destroyed_at,
            row.purpose or "expiry",
        )


_EPOCHS = KeyEpoch.__table__
_EPOCH = Prepared(select(_EPOCHS).where(_EPOCHS.c.id == bindparam("b_id")))  # built once


def private_name(epoch_id: str) -> str:
    return f"epoch-{epoch_id}.key"


class KeyStore:
    def __init__(self, keydir: KeyDir, db: Database, ctx: audit.AuditContext) -> None:
        self.keydir = keydir
        self.db = db
        self.ctx = ctx

    # -- public side: what the recording daemon needs ------------------------------------------

    def epochs(self) -> list[Epoch]:
        """The expiry epochs (one per ISO week), oldest first; hold keys are not among them."""
        with self.db.read() as s:
            rows = s.execute(
                select(KeyEpoch).where(KeyEpoch.purpose == "expiry").order_by(KeyEpoch.expires_from)
            ).scalars()
            return [Epoch.of(r) for r in rows]

    def hold_key(self) -> Epoch | None:
        """The newest live legal-hold key, if one was created."""
        with self.db.read() as s:
            row = s.execute(
                select(KeyEpoch)
                .where(KeyEpoch.purpose == "hold", KeyEpoch.destroyed_at.is_(None))
                .order_by(KeyEpoch.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()
            return Epoch.of(row) if row else None

    def destroy_private(self, epoch_id: str, actor: str, reason: str) -> bool:
        """Crypto-shredding: delete the epoch's private key file and mark the epoch destroyed,
        audited. False if this host does not hold the private key (it is kept elsewhere, and
        must be destroyed there); the epoch is then not marked.

        An empty ``.epoch-<id>.key.destroying`` file is written (and fsynced) before the key
        is deleted and removed after the commit: if the process dies in between, the next
        call finds the intent and the missing key, and commits the destruction here instead
        of reporting the key as kept on another host."""
        path = self.keydir.path / private_name(epoch_id)
        intent = self.keydir.path / f".{private_name(epoch_id)}.destroying"
        # a writer that crashed between its link and its unlink (KeyDir.write_new) left a
        # second name for the same key: it must go too, or the key survives its shredding
        for leftover in self.keydir.path.glob(f".{private_name(epoch_id)}.tmp-*"):
            leftover.unlink(missing_ok=True)
        if path.exists():
            os.close(os.open(intent, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            self._fsync_keydir()
            path.unlink(missing_ok=True)
            self._fsync_keydir()
        elif not intent.exists():
            return False
        with self.db.write() as s:
            row = s.get(KeyEpoch, epoch_id)
            recorded = row is not None and row.destroyed_at is not None  # by a racing run
            if row is not None and not recorded:
                row.destroyed_at = datetime.now(UTC)
            if not recorded:
                audit.append(
                    s,
                    self.ctx,
                    actor=actor,
                    action="key_epoch.destroyed",
                    subject_type="key_epoch",
                    subject_id=epoch_id,
                    details={"reason": reason},
                )
        intent.unlink(missing_ok=True)
        return True

    def _fsync_keydir(self) -> None:
        dir_fd = os.open(self.keydir.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def epoch(self, epoch_id: str, read: Reading | None = None) -> Epoch | None:
        """One epoch (a read on the cursor: the finalizer asks once per recording, on
        ``read``, the read it already checks the recording's row with, if given)."""
        if read is None:
            with self.db.reading() as own:
                return self.epoch(epoch_id, own)
        row: Any = read.first(_EPOCH, {"b_id": epoch_id})
        return Epoch.of(row) if row else None

    def epoch_for(self, expires_at: datetime, read: Reading | None = None) -> Epoch:
        """The live epoch a recording expiring then is sealed to."""
        found = self.epoch(expiry.epoch_id(expires_at), read)
        if found is None or found.destroyed_at is not None:
            raise NoEpoch(
                f"no key epoch {expiry.epoch_id(expires_at)} (the week the recording expires "
                "in): run `callconsent keys rotate`"
            )
        return found

    def runway(self, now: datetime, longest_days: int) -> timedelta:
        """How far the epochs reach beyond what a recording made now needs (negative or
        zero: a recording made now finds no epoch)."""
        needed = now + timedelta(days=longest_days)
        reach = needed
        for e in self.epochs():
            if e.destroyed_at is None and e.expires_from <= reach < e.expires_until:
                reach = e.expires_until
        return reach - needed

    def import_public(self, epochs: Iterable[Mapping[str, Any]], actor: str) -> list[Epoch]:
        """Publish epochs exported by ``keys export-public`` on the host that keeps the private
        keys (a PBX host with its own database then seals to them without ever holding a
        private key). Each is checked (fingerprint, week bounds); one already here must carry
        the same public key. Returns the new ones; importing the same file twice adds nothing."""
        existing = {e.id: e for e in self.epochs()}
        new: list[tuple[str, bytes]] = []
        for doc in epochs:
            epoch_id, public = str(doc["epoch"]), bytes.fromhex(str(doc["public_key"]))
            fingerprint = hashlib.sha256(public).hexdigest()
            if len(public) != 32 or fingerprint != doc["fingerprint"]:
                raise KeyStoreError(
                    f"epoch {epoch_id}: the public key does not match its fingerprint"
                )
            if int(doc["suite"]) != envelope.SUITE_X25519:
                raise KeyStoreError(f"epoch {epoch_id}: unknown suite {doc['suite']}")
            here = existing.get(epoch_id)
            if here is not None:
                if here.public_key != public:
                    raise KeyStoreError(
                        f"epoch {epoch_id} exists here with another public key (fingerprint "
                        f"{here.fingerprint[:16]}…): the file comes from another key store"
                    )
                continue
            new.append((epoch_id, public))
        for epoch_id, _ in new:  # every entry checked before the first is published
            try:
                expiry.epoch_bounds(epoch_id)
            except ValueError:
                raise KeyStoreError(f"not an epoch id: {epoch_id!r}") from None
        return [self._publish_public(epoch_id, public, actor) for epoch_id, public in new]

    def _publish_public(self, epoch_id: str, public: bytes, actor: str) -> Epoch:
        start, end = expiry.epoch_bounds(epoch_id)
        row = KeyEpoch(
            id=epoch_id,
            purpose="expiry",
            suite=envelope.SUITE_X25519,
            public_key=public,
            fingerprint=hashlib.sha256(public).hexdigest(),
            expires_from=start,
            expires_until=end,
            created_at=datetime.now(UTC),
        )
        with self.db.write() as s:
            s.add(row)
            s.flush()
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="key_epoch.imported",
                subject_type="key_epoch",
                subject_id=epoch_id,
                details={"fingerprint": row.fingerprint, "suite": row.suite},
            )
        return Epoch.of(row)

    # -- private side: admins ------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return (self.keydir.path / PARAMS_NAME).exists()

    def init(self, secret: bytes, *, scrypt_n: int = SCRYPT_N) -> PrivateKeys:
        """Create the key store's parameters for this passphrase or key file."""
        _check_secret(secret)
        if self.initialised:
            raise KeyStoreError(
                f"the key store in {self.keydir.path} exists; use `keys rotate` to add epochs"
            )
        salt = os.urandom(16)
        kek = _derive(secret, salt, scrypt_n)
        nonce = os.urandom(12)
        params = {
            "version": 1,
            "kdf": "scrypt",
            "n": scrypt_n,
            "r": 8,
            "p": 1,
            "salt": salt.hex(),
            "check": (nonce + AESGCM(kek).encrypt(nonce, _CHECK, None)).hex(),
        }
        self.keydir.ensure()
        self.keydir.write_new(PARAMS_NAME, json.dumps(params, indent=1).encode())
        return PrivateKeys(self, AESGCM(kek))

    def unlock(self, secret: bytes) -> PrivateKeys:
        if not self.initialised:
            raise KeyStoreError(f"no key store in {self.keydir.path}: run `callconsent keys init`")
        params = json.loads(self.keydir.read(PARAMS_NAME))
        kek = _derive(secret, bytes.fromhex(params["salt"]), int(params["n"]))
        check = bytes.fromhex(params["check"])
        try:
            AESGCM(kek).decrypt(check[:12], check[12:], None)
        except InvalidTag:
            raise KeyStoreError("wrong passphrase or key file for this key store") from None
        return PrivateKeys(self, AESGCM(kek))


class PrivateKeys:
    """An unlocked key store: creates epochs and opens their private keys."""

    def __init__(self, store: KeyStore, aead: AESGCM) -> None:
        self.store = store
        self._aead = aead

    def ensure_epochs(self, ids: Iterable[str], actor: str) -> list[Epoch]:
        """Create every epoch in ``ids`` that does not exist; returns the new ones. The private
        key file is written (and fsynced) before the public key is published in the store."""
        existing = {e.id for e in self.store.epochs()}
        created = []
        for epoch_id in ids:
            if epoch_id in existing:
                continue
            path = self.store.keydir.path / private_name(epoch_id)
            if path.exists():  # a crash between the file and the row: publish what is there
                public = envelope.public_from_private(self.private_key(epoch_id))
            else:
                private, public = envelope.generate_keypair()
                self.store.keydir.write_new(private_name(epoch_id), self._seal(epoch_id, private))
            created.append(self._publish(epoch_id, public, actor))
        return created

    def private_key(self, epoch_id: str) -> bytes:
        name = private_name(epoch_id)
        try:
            blob = self.store.keydir.read(name)
        except FileNotFoundError:
            raise KeyStoreError(
                f"the private key of epoch {epoch_id} is not in {self.store.keydir.path} "
                "(destroyed, or kept on another host)"
            ) from None
        if not blob.startswith(_MAGIC):
            raise KeyStoreError(f"{name} is not an epoch key file")
        suite, public = blob[6], blob[7:39]
        nonce, sealed = blob[39:51], blob[51:]
        try:
            private = self._aead.decrypt(nonce, sealed, _AAD + epoch_id.encode() + public)
        except InvalidTag:
            raise KeyStoreError(f"{name} does not open: damaged, or another key store's") from None
        if envelope.public_from_private(private, suite) != public:
            raise KeyStoreError(f"{name} holds a private key that does not match its public key")
        return private

    def ensure_hold_key(self, actor: str) -> Epoch:
        """The legal-hold key pair, created on first use. Held recordings get a second key slot
        sealed to it, so destroying their expiry epoch's key does not destroy them."""
        found = self.store.hold_key()
        if found is not None:
            return found
        hold_id = f"hold-{datetime.now(UTC):%Y%m%d%H%M%S}"
        private, public = envelope.generate_keypair()
        self.store.keydir.write_new(private_name(hold_id), self._seal(hold_id, private))
        return self._publish(hold_id, public, actor, purpose="hold")

    def _seal(self, epoch_id: str, private: bytes) -> bytes:
        public = envelope.public_from_private(private)
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, private, _AAD + epoch_id.encode() + public)
        return _MAGIC + bytes([envelope.SUITE_X25519]) + public + nonce + sealed

    def _publish(self, epoch_id: str, public: bytes, actor: str, purpose: str = "expiry") -> Epoch:
        if purpose == "hold":  # not an expiry week: valid from now, never by retention's clock
            start, end = datetime.now(UTC), datetime(9999, 12, 31, tzinfo=UTC)
        else:
            start, end = expiry.epoch_bounds(epoch_id)
        row = KeyEpoch(
            id=epoch_id,
            purpose=purpose,
            suite=envelope.SUITE_X25519,
            public_key=public,
            fingerprint=hashlib.sha256(public).hexdigest(),
            expires_from=start,
            expires_until=end,
            created_at=datetime.now(UTC),
        )
        with self.store.db.write() as s:
            s.add(row)
            s.flush()
            audit.append(
                s,
                self.store.ctx,
                actor=actor,
                action="key_epoch.created",
                subject_type="key_epoch",
                subject_id=epoch_id,
                details={"fingerprint": row.fingerprint, "suite": row.suite, "purpose": purpose},
            )
        return Epoch.of(row)


def _check_secret(secret: bytes) -> None:
    if len(secret) < 12:
        raise KeyStoreError("a key store passphrase needs at least 12 characters")


def _derive(secret: bytes, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(secret)
