"""The metadata store's tables (SQLAlchemy 2). Documented in ``docs/data-model.md``.

Schema changes go through alembic (``recorder/migrations``); ``sql/*.sql`` are generated
from the migrations for DBAs who do not run the ORM. No table holds a phone number in clear.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python whatever the database keeps (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps UTC, aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class RecordingState(enum.StrEnum):
    """recording -> closed -> encrypted | discarded -> purged (see docs/data-model.md)."""

    RECORDING = "recording"  # the PBX writes the file
    CLOSED = "closed"  # the file is final; waiting for the finalizer
    ENCRYPTED = "encrypted"  # ciphertext registered, plaintext gone
    DISCARDED = "discarded"  # must not be kept; audio destroyed (or being destroyed)
    PURGED = "purged"  # retention ended; ciphertext deleted


#: the states a recording ends in. Their rows are kept (the purged as tombstones), so they
#: grow with every recording ever made: counting them walks that part of the state index
#: (115 ms for 2 million recordings on SQLite, docs/performance.md, stop 27). The states a
#: recording works through (calls in progress, the finalizer's backlog) are as few as they are
#: short-lived: a count of them is a short range of the index (see recordings_by_state).
END_STATES = (RecordingState.ENCRYPTED, RecordingState.DISCARDED, RecordingState.PURGED)
WORKING_STATES = tuple(s for s in RecordingState if s not in END_STATES)


class NumberKind(enum.StrEnum):
    E164 = "e164"  # normalised; has a lookup key
    WITHHELD = "withheld"  # anonymous / restricted: no lookup key, nothing stored
    UNPARSED = "unparsed"  # not a phone number (an extension, a name): encrypted copy only
    NONE = "none"  # no number known
    ERASED = "erased"  # removed on the subject's request (Art. 17)


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pbx: Mapped[str] = mapped_column(String(16))  # asterisk | freeswitch | import
    node: Mapped[str] = mapped_column(String(64))  # the PBX host that saw the call
    pbx_call_id: Mapped[str] = mapped_column(String(64))  # Asterisk linkedid / FS Channel-Call-UUID
    campaign: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))  # inbound | outbound
    agent: Mapped[str | None] = mapped_column(String(64))
    number_kind: Mapped[str] = mapped_column(String(12), default=NumberKind.NONE.value)
    number_key: Mapped[str | None] = mapped_column(String(64), index=True)  # HMAC-SHA256, hex
    number_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # AES-GCM
    consent_status: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]

    # the calls list: newest first, keyset-paginated (web/queries.py)
    __table_args__ = (
        UniqueConstraint("node", "pbx", "pbx_call_id"),
        Index("ix_calls_started_at_id", "started_at", "id"),
    )


class ConsentRecord(Base):
    """Evidence: one ``decision`` row per call (enforced), then any ``change`` rows."""

    __tablename__ = "consent_evidence"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # decision | change
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))  # how it came about, or the change's cause
    actor: Mapped[str | None] = mapped_column(String(64))
    legal_basis: Mapped[str] = mapped_column(String(32))
    prompt_id: Mapped[str | None] = mapped_column(String(32))
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    digits: Mapped[list[Any]] = mapped_column(default=list)  # [{digit, at, attempt, valid}]
    prompts: Mapped[list[Any]] = mapped_column(default=list)  # [{prompt_id, at, outcome, sha256}]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pbx_call_id: Mapped[str | None] = mapped_column(String(64))
    pbx_channel_id: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "uq_consent_evidence_one_decision",
            "call_id",
            unique=True,
            sqlite_where=text("kind = 'decision'"),
            postgresql_where=text("kind = 'decision'"),
        ),
    )


class Recording(Base):
    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # our UUID; names the files
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    state: Mapped[str] = mapped_column(String(12))  # indexed with expires_at, below
    spool_path: Mapped[str] = mapped_column(String(512))  # where the PBX writes the plaintext
    format: Mapped[str] = mapped_column(String(8))  # wav | raw (headerless s16le)
    sample_rate: Mapped[int | None] = mapped_column(Integer)  # needed to wrap a .raw
    channels: Mapped[int] = mapped_column(Integer, default=1)
    pbx_ref: Mapped[str | None] = mapped_column(String(128))  # MixMonitorID / FS record path
    pbx_channel: Mapped[str | None] = mapped_column(String(128))  # the leg it records
    retention_category: Mapped[str] = mapped_column(String(32), default="default")
    started_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    plaintext_size: Mapped[int | None] = mapped_column(BigInteger)
    plaintext_sha256: Mapped[str | None] = mapped_column(String(64))
    ciphertext_path: Mapped[str | None] = mapped_column(String(512))
    ciphertext_size: Mapped[int | None] = mapped_column(BigInteger)
    ciphertext_sha256: Mapped[str | None] = mapped_column(String(64))
    key_epoch: Mapped[str | None] = mapped_column(String(32), index=True)
    encrypted_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(Text)
    discarded_at: Mapped[datetime | None]
    discard_reason: Mapped[str | None] = mapped_column(String(64))
    purged_at: Mapped[datetime | None]
    purge_reason: Mapped[str | None] = mapped_column(String(32))  # retention | dpo_delete | …
    hold_key: Mapped[str | None] = mapped_column(
        String(32)
    )  # a hold key its data key is wrapped to
    last_error: Mapped[str | None] = mapped_column(Text)

    # retention walks (state = encrypted, expires_at <= now) in expiry order
    __table_args__ = (Index("ix_recordings_state_expires_at", "state", "expires_at"),)


class KeyEpoch(Base):
    """A key pair for the recordings that expire in one ISO week (``2026-W50``). The store
    holds the public key (every PBX host seals to it); the private key stays in a key store,
    encrypted at rest, and is destroyed when the epoch's last recording has expired."""

    __tablename__ = "key_epochs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # "expiry": one ISO week of expiry; "hold": a legal-hold key, never shredded by retention
    purpose: Mapped[str] = mapped_column(String(8), default="expiry", server_default="expiry")
    suite: Mapped[int] = mapped_column(Integer)  # envelope suite: 1 = X25519 HPKE
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the public key, hex
    expires_from: Mapped[datetime] = mapped_column(index=True)  # Monday 00:00 UTC
    expires_until: Mapped[datetime]  # the next Monday
    created_at: Mapped[datetime]
    destroyed_at: Mapped[datetime | None]  # private key destroyed (crypto-shredding)


#: the actors that write an audit row for every call and every purged recording: the daemon
#: (``recorder.store.calljobs.SYSTEM_ACTOR``) and retention. The audit log's index by actor
#: (migration 0007) leaves their rows out: it is for finding what a person did, and the
#: daemon's writes do not maintain it. Retention's rows have an index of their own (migration
#: 0008): in a store that has not purged yet (a year's retention, a new installation) they are
#: none or few, and the log filtered by retention walked every row to find them; retention
#: writes them in its pass, never on the daemon's hot path. The daemon's rows are in neither.
RETENTION_ACTOR = "retention"
BULK_ACTORS = ("callconsent", RETENTION_ACTOR)
PEOPLE_ONLY = "actor NOT IN (" + ", ".join(f"'{actor}'" for actor in BULK_ACTORS) + ")"
RETENTION_ONLY = f"actor = '{RETENTION_ACTOR}'"


def actor_index_condition(actor: str) -> str | None:
    """The condition of the partial index that holds ``actor``'s audit rows (None: the
    daemon's, in neither). A query by actor repeats it as a literal, so the planner may use
    the index: it must see that the query implies the index's WHERE, and PostgreSQL's generic
    plan of a prepared statement (psycopg prepares one after five runs) knows the actor only
    as ``$1``."""
    if actor == RETENTION_ACTOR:
        return RETENTION_ONLY
    return PEOPLE_ONLY if actor not in BULK_ACTORS else None


class AuditEntry(Base):
    """Append-only, hash-chained: ``hash = SHA-256(canonical row incl. prev_hash)``."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(
            "ix_audit_log_person_actor",
            "actor",
            "seq",
            sqlite_where=text(PEOPLE_ONLY),
            postgresql_where=text(PEOPLE_ONLY),
        ),
        Index(
            "ix_audit_log_retention",
            "seq",
            sqlite_where=text(RETENTION_ONLY),
            postgresql_where=text(RETENTION_ONLY),
        ),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    node: Mapped[str] = mapped_column(String(64))
    os_user: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str | None] = mapped_column(String(64), index=True)
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, hashed byte for byte
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The chain's tail, one row: writers lock it, so the chain stays linear."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


# -- people: the web console's users, their sessions, API tokens and share links ---------------
# (docs/data-model.md "Users and access"; secrets are stored as SHA-256 / argon2id, never raw)


class User(Base):
    """A person who may act on recordings (web console, API, and the CLI's ``--actor``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # agent | supervisor | dpo | admin
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None: no login
    totp_secret: Mapped[str | None] = mapped_column(String(64))  # base32; None: no 2nd factor
    #: the 30-second step of the last TOTP code accepted; a code of that step or an earlier
    #: one is refused, so a code seen once cannot be used again (RFC 6238, 5.2)
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)  # since the last success
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]


class WebSession(Base):
    """A browser's login, server-side: the cookie carries a random token, we keep its hash."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))  # per session, sent in every form
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    idle_expires_at: Mapped[datetime]
    absolute_expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ApiToken(Base):
    """A personal API token: it acts as its user, with the user's role."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ShareLink(Base):
    """A link to one recording's player, for someone without an account."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    recording_id: Mapped[str] = mapped_column(ForeignKey("recordings.id"), index=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    max_plays: Mapped[int | None] = mapped_column(Integer)  # None: unlimited until expiry
    plays_used: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None]


class ShareTicket(Base):
    """A browser that opened a share link's page may fetch its audio: the ticket is a random
    cookie scoped to the link, kept as its SHA-256 here (not in one process's memory), so any
    ``callconsent web`` process serving the link knows it."""

    __tablename__ = "share_tickets"

    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("share_links.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class LoginFailure(Base):
    """A failed web login from a client address, kept while it counts towards the address's
    throttle (``[web] address_max_failures`` within ``lockout_minutes``), in the store so that
    every ``callconsent web`` process counts the same failures."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(index=True)

    __table_args__ = (Index("ix_login_failures_address_at", "address", "at"),)


def recordings_by_state(session: Session, states: tuple[RecordingState, ...]) -> dict[str, int]:
    """How many recordings are in each of ``states`` (0 for none), by the state index: for
    :data:`WORKING_STATES` a short range of it whatever the store keeps."""
    counts = dict.fromkeys((s.value for s in states), 0)
    query = (
        select(Recording.state, func.count())
        .where(Recording.state.in_([s.value for s in states]))
        .group_by(Recording.state)
    )
    for state, n in session.execute(query):
        counts[state] = n
    return counts
