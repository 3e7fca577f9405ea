"""The public-key envelope around each recording's data key: HPKE (RFC 9180) in base mode.

Suite 1 is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, from ``cryptography``'s
``hpke`` module. The recording id and the key epoch are bound through HPKE's ``info``, so a
slot copied into another recording's file, or relabelled with another epoch, does not open.
The daemon that records holds public keys only: a stolen PBX host cannot decrypt what it
recorded. Suite 2 (hybrid ML-KEM-768 + X25519) is reserved in the slot format; the key store
writes suite 1 until it is enabled.
"""

from __future__ import annotations

import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from recorder.vault.fileformat import KEY_SIZE, KeySlot

SUITE_X25519 = 1
SUITE_MLKEM768_X25519 = 2  # reserved: DHKEM hybrid ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM
_INFO = b"callconsent recording data key v1\x00"
_SUITES = {SUITE_X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)}


class EnvelopeError(ValueError):
    """A key slot could not be opened: wrong private key, another recording's or epoch's
    slot, or a damaged slot."""


def info(recording_id: str, epoch: str) -> bytes:
    """HPKE ``info``: a label, the recording's 16 id bytes, then the epoch id (last, so the
    encoding is unambiguous)."""
    return _INFO + uuid.UUID(recording_id).bytes + epoch.encode("ascii")


def generate_keypair(suite: int = SUITE_X25519) -> tuple[bytes, bytes]:
    """(private, public) raw key bytes for an epoch."""
    _suite(suite)
    private = x25519.X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_from_private(private: bytes, suite: int = SUITE_X25519) -> bytes:
    _suite(suite)
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def wrap(data_key: bytes, public_key: bytes, recording_id: str, epoch: str) -> KeySlot:
    """Seal the data key to an epoch's public key."""
    if len(data_key) != KEY_SIZE:
        raise ValueError("the data key must be 32 bytes")
    pub = x25519.X25519PublicKey.from_public_bytes(public_key)
    sealed = _suite(SUITE_X25519).encrypt(data_key, pub, info=info(recording_id, epoch))
    return KeySlot(SUITE_X25519, epoch, sealed)


def unwrap(slot: KeySlot, private_key: bytes, recording_id: str) -> bytes:
    """Open a slot with its epoch's private key."""
    priv = x25519.X25519PrivateKey.from_private_bytes(private_key)
    try:
        key = _suite(slot.suite).decrypt(slot.wrapped, priv, info=info(recording_id, slot.epoch))
    except InvalidTag:
        raise EnvelopeError(
            f"key slot for epoch {slot.epoch} does not open with this private key "
            "(wrong key, or the slot belongs to another recording or epoch)"
        ) from None
    if len(key) != KEY_SIZE:
        raise EnvelopeError("key slot holds a data key of the wrong size")
    return key


def _suite(suite: int) -> hpke.Suite:
    try:
        return _SUITES[suite]
    except KeyError:
        raise EnvelopeError(f"key slot suite {suite} is not supported by this version") from None
