"""What the pages and the API read from the store: calls with filters and keyset pagination,
one call's evidence and timeline, the audit log, the dashboard's numbers. Every query over
calls goes through :func:`web.authz.visible_calls`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy import Select, and_, func, or_, select, text
from sqlalchemy.orm import Session

from recorder.store.models import (
    AuditEntry,
    Call,
    ConsentRecord,
    KeyEpoch,
    Recording,
    actor_index_condition,
)
from recorder.store.numbers import mask
from web import authz
from web.accounts import Person
from web.services import Services

DIRECTIONS = ("inbound", "outbound", "unknown")
STATUSES = ("granted", "declined", "no_input", "withdrawn", "not_required", "unavailable")
OUTCOMES = ("granted", "declined", "no_input", "withdrawn", "not_required")


class BadQuery(ValueError):
    """A filter or cursor we cannot read: the message names it."""


@dataclass(frozen=True)
class CallFilter:
    since: date | None = None
    until: date | None = None
    campaign: str | None = None
    direction: str | None = None
    consent: str | None = None
    agent: str | None = None
    number_key: str | None = None  # the keyed hash of the number, never the number
    after: str | None = None  # keyset cursor

    @classmethod
    def from_params(cls, params: Any) -> CallFilter:
        def text(name: str, limit: int = 64) -> str | None:
            v = (params.get(name) or "").strip()
            if len(v) > limit:
                raise BadQuery(f"{name}: at most {limit} characters")
            return v or None

        def day(name: str) -> date | None:
            v = text(name, 10)
            try:
                return date.fromisoformat(v) if v else None
            except ValueError:
                raise BadQuery(f"{name}: expected a date YYYY-MM-DD") from None

        direction, consent = text("direction"), text("consent")
        if direction and direction not in DIRECTIONS:
            raise BadQuery(f"direction: one of {', '.join(DIRECTIONS)}")
        if consent and consent not in STATUSES:
            raise BadQuery(f"consent: one of {', '.join(STATUSES)}")
        nk = text("nk")
        if nk and (len(nk) != 64 or any(c not in "0123456789abcdef" for c in nk)):
            raise BadQuery("nk: not a number key")
        return cls(
            day("since"),
            day("until"),
            text("campaign"),
            direction,
            consent,
            text("agent"),
            nk,
            text("after", 200),
        )

    def params(self, **override: Any) -> dict[str, str]:
        values = {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "campaign": self.campaign,
            "direction": self.direction,
            "consent": self.consent,
            "agent": self.agent,
            "nk": self.number_key,
            "after": self.after,
        } | override
        return {k: v for k, v in values.items() if v}


def _cursor(call: Call) -> str:
    return base64.urlsafe_b64encode(f"{call.started_at.isoformat()}|{call.id}".encode()).decode()


def _uncursor(text: str) -> tuple[datetime, str]:
    try:
        at, cid = base64.urlsafe_b64decode(text.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery("after: not a cursor this server made") from None
    return moment, cid


@dataclass
class CallPage:
    calls: list[Call]
    counts: dict[str, int]  # call id -> its recordings
    next_cursor: str | None

    def summaries(self, services: Services) -> list[dict[str, Any]]:
        """The API's rows."""
        return [call_summary(services, c, self.counts.get(c.id, 0)) for c in self.calls]

    def rows_html(self, services: Services) -> Markup:
        """The calls page's table rows, rendered here rather than cell by cell in the
        template: Jinja's autoescape made 400 ``Markup`` objects per page, a third of what the
        page cost beyond its statements (bench/web.py). Every value is escaped all the same."""
        return Markup(  # noqa: S704 (every value below goes through _esc)
            "".join(
                [
                    _ROW.format(
                        id=_esc(c.id),
                        started=_esc(c.started_at.isoformat(" ", "seconds")[:19]),
                        campaign=_esc(c.campaign or ""),
                        direction=_esc(c.direction),
                        agent=_esc(c.agent or "-"),
                        number=_esc(shown_number(services, c, full=False)),
                        consent=_esc(c.consent_status or "-"),
                        recordings=int(self.counts.get(c.id, 0)),
                    )
                    for c in self.calls
                ]
            )
        )


#: one row of the calls page (templates/calls.html has the table around it)
_ROW = (
    '<tr><td><a href="/calls/{id}">{started}</a></td><td>{campaign}</td><td>{direction}</td>\n'
    "<td>{agent}</td><td>{number}</td><td>{consent}</td><td>{recordings}</td></tr>\n"
)

try:  # markupsafe's C escaping (Jinja's autoescape: & < > ' "), without a Markup per cell
    from markupsafe._speedups import _escape_inner as _esc
except ImportError:  # markupsafe without its C speedups
    from html import escape as _esc


def search_calls(services: Services, person: Person, f: CallFilter, limit: int) -> CallPage:
    q = authz.visible_calls(select(Call), person)
    if f.since:
        q = q.where(Call.started_at >= datetime.combine(f.since, time(), UTC))
    if f.until:
        q = q.where(Call.started_at < datetime.combine(f.until + timedelta(days=1), time(), UTC))
    for column, value in (
        (Call.campaign, f.campaign),
        (Call.direction, f.direction),
        (Call.consent_status, f.consent),
        (Call.agent, f.agent),
        (Call.number_key, f.number_key),
    ):
        if value:
            q = q.where(column == value)
    if f.after:
        at, cid = _uncursor(f.after)
        q = q.where(or_(Call.started_at < at, and_(Call.started_at == at, Call.id < cid)))
    q = q.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit + 1)
    with services.db.read() as s:
        calls = list(s.scalars(q))
        counts = _recording_counts(s, [c.id for c in calls[:limit]])
    return CallPage(
        calls[:limit], counts, _cursor(calls[limit - 1]) if len(calls) > limit else None
    )


def _recording_counts(s: Session, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    q = select(Recording.call_id, func.count()).where(Recording.call_id.in_(ids))
    return dict(s.execute(q.group_by(Recording.call_id)).all())


def shown_number(services: Services, call: Call, full: bool) -> str:
    if call.number_kind in ("withheld", "none", "erased"):
        return call.number_kind
    if not call.number_enc:
        return "-"
    number = services.numbers.reveal(call.number_enc)
    if full:
        return number
    # E.164 is "+" and digits: its mask is its last two (mask() reads any notation, slower)
    return "…" + number[-2:] if call.number_kind == "e164" else mask(number)


def call_summary(services: Services, call: Call, recordings: int = 0) -> dict[str, Any]:
    return {
        "id": call.id,
        "started_at": call.started_at.isoformat(),
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "campaign": call.campaign,
        "direction": call.direction,
        "agent": call.agent,
        "consent_status": call.consent_status,
        "number": shown_number(services, call, full=False),
        "recordings": recordings,
        "pbx": call.pbx,
    }


@dataclass
class CallDetail:
    call: Call
    summary: dict[str, Any]
    evidence: list[dict[str, Any]]
    recordings: list[Recording]
    timeline: list[tuple[datetime, str, str]] = field(default_factory=list)


def load_call(services: Services, call_id: str) -> Call | None:
    with services.db.read() as s:
        return s.get(Call, call_id)


def call_detail(services: Services, person: Person, call: Call) -> CallDetail:
    with services.db.read() as s:
        evidence = list(
            s.scalars(
                select(ConsentRecord)
                .where(ConsentRecord.call_id == call.id)
                .order_by(ConsentRecord.decided_at)
            )
        )
        recs = list(
            s.scalars(
                select(Recording).where(Recording.call_id == call.id).order_by(Recording.started_at)
            )
        )
        subjects = [call.id, *(r.id for r in recs)]
        rows = list(
            s.scalars(
                select(AuditEntry)
                .where(AuditEntry.subject_id.in_(subjects))
                .order_by(AuditEntry.seq)
                .limit(500)
            )
        )
    summary = call_summary(services, call, len(recs))
    summary["number"] = shown_number(services, call, authz.sees_full_numbers(person))
    timeline = [(r.at, r.action, r.subject_id or "") for r in rows]
    for e in evidence:
        for p in e.prompts or []:
            if isinstance(p, dict) and p.get("at"):
                timeline.append(
                    (
                        _when(p["at"]),
                        "prompt." + str(p.get("outcome", "played")),
                        str(p.get("prompt_id")),
                    )
                )
        for d in e.digits or []:
            if isinstance(d, dict) and d.get("at"):
                timeline.append((_when(d["at"]), "digit", str(d.get("digit"))))
    timeline.sort(key=lambda t: t[0])
    return CallDetail(call, summary, [evidence_dict(e) for e in evidence], recs, timeline)


def _when(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def evidence_dict(e: ConsentRecord) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "status": e.status,
        "method": e.method,
        "legal_basis": e.legal_basis,
        "decided_at": e.decided_at.isoformat(),
        "digits": e.digits,
        "prompt_id": e.prompt_id,
        "prompt_sha256": e.prompt_sha256,
        "language": e.language,
        "prompts": e.prompts,
        "attempts": e.attempts,
        "policy": e.policy,
        "actor": e.actor,
    }


def recording_dict(rec: Recording) -> dict[str, Any]:
    return {
        "id": rec.id,
        "call_id": rec.call_id,
        "state": rec.state,
        "started_at": rec.started_at.isoformat(),
        "duration_ms": rec.duration_ms,
        "channels": rec.channels,
        "plaintext_size": rec.plaintext_size,
        "plaintext_sha256": rec.plaintext_sha256,
        "key_epoch": rec.key_epoch,
        "expires_at": rec.expires_at.isoformat() if rec.expires_at else None,
        "legal_hold": rec.legal_hold,
        "discarded_at": rec.discarded_at.isoformat() if rec.discarded_at else None,
        "discard_reason": rec.discard_reason,
        "purged_at": rec.purged_at.isoformat() if rec.purged_at else None,
        "purge_reason": rec.purge_reason,
    }


def gone_why(services: Services, rec: Recording) -> str | None:
    """Why a recording has no audio any more (or None when it has)."""
    if rec.state == "purged":
        return f"deleted on {rec.purged_at:%Y-%m-%d %H:%M} UTC ({rec.purge_reason or 'retention'})"
    if rec.state == "discarded":
        return f"discarded on {rec.discarded_at:%Y-%m-%d %H:%M} UTC ({rec.discard_reason})"
    if rec.state in ("recording", "closed"):
        return "not encrypted yet: the audio is still being processed"
    if rec.key_epoch and not rec.legal_hold:
        with services.db.read() as s:
            epoch = s.get(KeyEpoch, rec.key_epoch)
        if epoch and epoch.destroyed_at:
            return (
                f"crypto-shredded: the key of epoch {epoch.id} was destroyed on "
                f"{epoch.destroyed_at:%Y-%m-%d} UTC, so the audio is unreadable everywhere"
            )
    return None


def load_recording(services: Services, rid: str) -> tuple[Recording, Call] | None:
    with services.db.read() as s:
        rec = s.get(Recording, rid)
        call = s.get(Call, rec.call_id) if rec else None
        return (rec, call) if rec and call else None


def audit_statement(
    action: str | None, actor: str | None, before: int | None, limit: int
) -> Select[tuple[AuditEntry]]:
    """The audit log's rows, newest first, as the audit page filters them (by actor: on the
    partial index that holds the actor's rows, ``models.actor_index_condition``)."""
    q = select(AuditEntry)
    if action:
        q = q.where(AuditEntry.action == action)
    if actor:
        q = q.where(AuditEntry.actor == actor)
        condition = actor_index_condition(actor)
        if condition is not None:
            q = q.where(text(condition))
    if before:
        q = q.where(AuditEntry.seq < before)
    return q.order_by(AuditEntry.seq.desc()).limit(limit)


def audit_rows(
    services: Services, action: str | None, actor: str | None, before: int | None, limit: int
) -> list[AuditEntry]:
    with services.db.read() as s:
        return list(s.scalars(audit_statement(action, actor, before, limit)))


def waveform_marks(services: Services, rec: Recording) -> list[dict[str, Any]]:
    """Moments to mark on the player's waveform, in seconds from the recording's start: the
    consent decision and any later change (a withdrawal), when they fall inside it."""
    with services.db.read() as s:
        rows = s.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.call_id == rec.call_id)
            .order_by(ConsentRecord.decided_at)
        )
        marks = []
        for e in rows:
            at = (e.decided_at - rec.started_at).total_seconds()
            if 0 <= at <= (rec.duration_ms or 0) / 1000:
                marks.append({"at": round(at, 2), "label": f"{e.kind}: {e.status}"})
    return marks


PAUSE_ACTIONS = ("recording.paused", "recording.resumed")


def paused_stretches(services: Services, rec: Recording) -> list[dict[str, float]]:
    """The stretches an agent paused the recording, in seconds from its start, from the audit
    rows the call book writes once the PBX has muted or unmuted it (the paused stretch is
    silence in the file, so the file's clock is the call's). A pause with no resume lasts to
    the end; a repeated pause or resume is ignored. The recording's ``started_at`` is when we
    asked the PBX to start, a few tens of ms before its first sample: the marks are that early.
    """
    end = (rec.duration_ms or 0) / 1000
    with services.db.read() as s:
        rows = s.execute(
            select(AuditEntry.action, AuditEntry.at)
            .where(
                AuditEntry.subject_id == rec.id,
                AuditEntry.subject_type == "recording",
                AuditEntry.action.in_(PAUSE_ACTIONS),
            )
            .order_by(AuditEntry.seq)
        ).all()
    stretches: list[tuple[float, float]] = []
    since: float | None = None
    for action, at in rows:
        offset = min(max((at - rec.started_at).total_seconds(), 0.0), end)
        if action == "recording.paused":
            since = offset if since is None else since
        elif since is not None:
            stretches.append((since, offset))
            since = None
    if since is not None:
        stretches.append((since, end))
    return [{"start": round(a, 2), "end": round(b, 2)} for a, b in stretches if b > a]


def clock(seconds: float) -> str:
    """``m:ss.s`` (the player's moments, written out for a page without JavaScript)."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


RECORDING_STATES = ("recording", "closed", "encrypted", "discarded", "purged")


def search_recordings(
    services: Services, person: Person, params: Any, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Recordings, newest first, by state, campaign and date range; the same visibility and
    keyset cursor as the calls."""
    f = CallFilter.from_params(params)
    state = (params.get("state") or "").strip()
    if state and state not in RECORDING_STATES:
        raise BadQuery(f"state: one of {', '.join(RECORDING_STATES)}")
    q = authz.visible_calls(
        select(Recording, Call).join(Call, Call.id == Recording.call_id), person
    )
    if state:
        q = q.where(Recording.state == state)
    if f.campaign:
        q = q.where(Call.campaign == f.campaign)
    if f.since:
        q = q.where(Recording.started_at >= datetime.combine(f.since, time(), UTC))
    if f.until:
        end = datetime.combine(f.until + timedelta(days=1), time(), UTC)
        q = q.where(Recording.started_at < end)
    if f.after:
        at, rid = _uncursor(f.after)
        q = q.where(
            or_(Recording.started_at < at, and_(Recording.started_at == at, Recording.id < rid))
        )
    q = q.order_by(Recording.started_at.desc(), Recording.id.desc()).limit(limit + 1)
    with services.db.read() as s:
        rows = [(r, c) for r, c in s.execute(q)]
    found = [recording_dict(r) | {"campaign": c.campaign} for r, c in rows[:limit]]
    last = rows[limit - 1][0] if len(rows) > limit else None
    cursor = (
        base64.urlsafe_b64encode(f"{last.started_at.isoformat()}|{last.id}".encode()).decode()
        if last
        else None
    )
    return found, cursor
