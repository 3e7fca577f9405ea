"""Share links: a link to one recording's player for someone without an account, with an
expiry (default 24 h, at most ``[web] share_link_max_hours``) and an optional number of plays.
The token (256 random bits) is shown once; the store keeps its SHA-256. Every creation, use
and revocation is an audit row. Opening the link hands the browser a ticket for its audio
(kept hashed in the store, so every ``callconsent web`` process serving the link knows it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from recorder.store import audit
from recorder.store.db import Database
from recorder.store.models import Recording, RecordingState, ShareLink, ShareTicket
from web.tokens import new_token, token_hash

DEFAULT_HOURS = 24
TICKET_HOURS = 6  # how long the browser that opened a link may fetch its audio


class ShareRefused(Exception):
    """The link cannot be used (unknown, expired, revoked, used up); says which."""


@dataclass(frozen=True, slots=True)
class OpenLink:
    id: int
    recording_id: str
    expires_at: datetime
    plays_left: int | None


class ShareLinks:
    def __init__(self, db: Database, ctx: audit.AuditContext, max_hours: int) -> None:
        self.db = db
        self.ctx = ctx
        self.max_hours = max_hours

    def create(
        self, recording_id: str, *, user_id: int, actor: str, hours: int, max_plays: int | None
    ) -> tuple[int, str]:
        """(link id, token). Only an encrypted recording can be shared."""
        if not 1 <= hours <= self.max_hours:
            raise ShareRefused(f"a share link lives 1 to {self.max_hours} hours")
        if max_plays is not None and not 1 <= max_plays <= 1000:
            raise ShareRefused("plays must be 1 to 1000, or empty for no limit")
        raw, digest = new_token()
        now = datetime.now(UTC)
        with self.db.write() as s:
            rec = s.get(Recording, recording_id)
            if rec is None or rec.state != RecordingState.ENCRYPTED.value:
                raise ShareRefused("only a recording with audio can be shared")
            link = ShareLink(
                token_hash=digest,
                recording_id=recording_id,
                created_by=user_id,
                created_at=now,
                expires_at=now + timedelta(hours=hours),
                max_plays=max_plays,
                plays_used=0,
            )
            s.add(link)
            s.flush()
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="share.created",
                subject_type="recording",
                subject_id=recording_id,
                details={"link": link.id, "hours": hours, "max_plays": max_plays},
            )
            return link.id, raw

    def check(self, raw: str) -> OpenLink:
        """The link, if usable now (no play counted)."""
        with self.db.read() as s:
            q = select(ShareLink).where(ShareLink.token_hash == token_hash(raw))
            return _usable(s.scalars(q).one_or_none())

    def play(self, raw: str, address: str) -> tuple[OpenLink, str]:
        """Count one play (opening the page) and audit it with time and address; returns the
        link and a ticket for the browser that opened it (its audio needs it), stored hashed
        in the same transaction (expired tickets are dropped there too)."""
        ticket, ticket_digest = new_token()
        now = datetime.now(UTC)
        with self.db.write() as s:
            link = s.scalars(
                select(ShareLink).where(ShareLink.token_hash == token_hash(raw))
            ).one_or_none()
            opened = _usable(link)
            assert link is not None
            if link.max_plays is not None and link.plays_used >= link.max_plays:
                raise ShareRefused("this link has been played as often as it allows")
            link.plays_used += 1
            s.execute(delete(ShareTicket).where(ShareTicket.expires_at <= now))
            s.add(
                ShareTicket(
                    ticket_hash=ticket_digest,
                    link_id=link.id,
                    expires_at=min(now + timedelta(hours=TICKET_HOURS), link.expires_at),
                )
            )
            audit.append(
                s,
                self.ctx,
                actor=f"share-link-{link.id}",
                action="share.played",
                subject_type="recording",
                subject_id=link.recording_id,
                details={"link": link.id, "address": address, "play": link.plays_used},
            )
            return opened, ticket

    def ticket_holds(self, link_id: int, ticket: str) -> bool:
        """Whether ``ticket`` was handed out by opening this link and has not expired."""
        if not ticket:
            return False
        with self.db.read() as s:
            row = s.get(ShareTicket, token_hash(ticket))
            return row is not None and row.link_id == link_id and row.expires_at > datetime.now(UTC)

    def revoke(self, link_id: int, *, actor: str) -> bool:
        with self.db.write() as s:
            link = s.get(ShareLink, link_id)
            if link is None:
                raise ShareRefused(f"no share link {link_id}")
            if link.revoked_at is not None:
                return False
            link.revoked_at = datetime.now(UTC)
            audit.append(
                s,
                self.ctx,
                actor=actor,
                action="share.revoked",
                subject_type="recording",
                subject_id=link.recording_id,
                details={"link": link.id},
            )
            return True

    def of_recording(self, recording_id: str) -> list[ShareLink]:
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(ShareLink)
                    .where(ShareLink.recording_id == recording_id)
                    .order_by(ShareLink.id)
                )
            )

    def get(self, link_id: int) -> ShareLink | None:
        with self.db.read() as s:
            return s.get(ShareLink, link_id)


def _usable(link: ShareLink | None) -> OpenLink:
    if link is None:
        raise ShareRefused("this link does not exist")
    if link.revoked_at is not None:
        raise ShareRefused("this link has been revoked")
    if link.expires_at <= datetime.now(UTC):
        raise ShareRefused("this link has expired")
    left = None if link.max_plays is None else link.max_plays - link.plays_used
    return OpenLink(link.id, link.recording_id, link.expires_at, left)
