"""What pages and the API both do to recordings and data subjects, through the recorder's own
code (the same :class:`~recorder.governance.custody.Custody` and
:class:`~recorder.governance.subjects.Subjects` as the CLI, with the same rules), each an
audit row naming the user."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.responses import Response, StreamingResponse

from recorder.governance.custody import CustodyError
from recorder.governance.subjects import SubjectError
from recorder.store import audit
from recorder.store.models import Call, Recording
from recorder.store.numbers import NotAPhoneNumber
from recorder.vault import envelope
from recorder.vault import fileformat as ff
from web import authz, queries, zipstream
from web.audio import ClearAudio, RangeNotSatisfiable, parse_range
from web.routing import Ctx, HttpError
from web.sharing import ShareRefused


def visible_call(ctx: Ctx, call_id: str) -> Call:
    call = queries.load_call(ctx.services, call_id) if len(call_id) <= 64 else None
    if call is None:
        raise HttpError(404, "no such call")
    if not authz.may_see_call(ctx.person, call):
        raise HttpError(403, "this call is not yours")
    return call


def visible_recording(ctx: Ctx, rid: str) -> tuple[Recording, Call]:
    found = queries.load_recording(ctx.services, rid) if len(rid) <= 64 else None
    if found is None:
        raise HttpError(404, "no such recording")
    if not authz.may_see_call(ctx.person, found[1]):
        raise HttpError(403, "this recording is not from one of your calls")
    return found


def _audit(ctx: Ctx, actor: str, action: str, rid: str, **details: Any) -> None:
    with ctx.services.db.write() as s:
        audit.append(
            s,
            ctx.services.ctx,
            actor=actor,
            action=action,
            subject_type="recording",
            subject_id=rid,
            details={"address": ctx.address, "via": "api" if ctx.api else "web", **details},
        )


def audio_response(ctx: Ctx, rec: Recording, actor: str, *, download: bool = False) -> Response:
    """The recording's WAV, decrypted segment by segment for the range asked (``Range``)."""
    keys = ctx.services.keys
    if keys is None:
        raise HttpError(503, f"audio is unavailable: {ctx.services.keys_problem}")
    if rec.state != "encrypted" or not rec.ciphertext_path:
        raise HttpError(410, queries.gone_why(ctx.services, rec) or "this recording has no audio")
    try:
        clear = ClearAudio(Path(rec.ciphertext_path), rec.id, keys.private_key)
    except FileNotFoundError:
        raise HttpError(404, "the encrypted file is not in this host's vault") from None
    except (ff.TamperedError, ff.FormatError, envelope.EnvelopeError, OSError) as exc:
        raise HttpError(
            410, queries.gone_why(ctx.services, rec) or f"cannot decrypt: {exc}"
        ) from None
    if rec.plaintext_size is not None and clear.size != rec.plaintext_size:
        clear.close()
        raise HttpError(409, "the encrypted file's length differs from the stored one")
    try:
        wanted = parse_range(ctx.request.headers.get("range"), clear.size)
    except RangeNotSatisfiable as exc:
        clear.close()
        return Response(
            str(exc),
            416,
            headers={"Content-Range": f"bytes */{clear.size}"},
            media_type="text/plain",
        )
    starts = wanted is None or wanted.start == 0
    if starts and ctx.request.method != "HEAD":  # a play (or a download) starts here; seeks don't
        action = "recording.downloaded" if download else "recording.played"
        _audit(ctx, actor, action, rec.id, range=ctx.request.headers.get("range"))
    body = _first_checked(clear.read(wanted))
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{rec.id}.wav"'
    if wanted is None:
        headers["Content-Length"] = str(clear.size)
        return StreamingResponse(body, 200, headers, media_type="audio/wav")
    headers["Content-Length"] = str(wanted.length)
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{clear.size}"
    return StreamingResponse(body, 206, headers, media_type="audio/wav")


def _first_checked(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decrypt the first segment before the response starts, so a tampered file is a clear
    error status; a later segment that fails aborts the stream (the client sees it cut)."""
    try:
        first = next(chunks, b"")
    except ff.TamperedError as exc:
        raise HttpError(422, f"the recording does not authenticate: {exc}") from None
    return itertools.chain([first], chunks)


def custody_act(ctx: Ctx, rid: str, verb: str, reason: str) -> str:
    rec, _ = visible_recording(ctx, rid)
    custody, who = ctx.services.custody, ctx.person.name
    try:
        if verb == "hold":
            if ctx.services.keys is None:
                raise HttpError(503, f"a hold needs the private keys: {ctx.services.keys_problem}")
            return (
                "held"
                if custody.hold(rec.id, ctx.services.keys, actor=who, reason=reason)
                else "already held"
            )
        if verb == "unhold":
            return (
                "released" if custody.unhold(rec.id, actor=who, reason=reason) else "was not held"
            )
        return custody.delete(rec.id, actor=who, reason=reason)
    except CustodyError as exc:
        raise HttpError(409, str(exc)) from None


def share(ctx: Ctx, rid: str, hours: int, plays: int | None) -> tuple[int, str]:
    rec, _ = visible_recording(ctx, rid)
    try:
        link_id, raw = ctx.services.links.create(
            rec.id, user_id=ctx.person.id, actor=ctx.person.name, hours=hours, max_plays=plays
        )
    except ShareRefused as exc:
        raise HttpError(409, str(exc)) from None
    return link_id, f"{ctx.request.base_url}s/{raw}"


def revoke_share(ctx: Ctx, link_id: str) -> tuple[bool, str]:
    if not link_id.isdigit() or len(link_id) > 12:
        raise HttpError(404, "no such share link")
    link = ctx.services.links.get(int(link_id))
    if link is None:
        raise HttpError(404, "no such share link")
    visible_recording(ctx, link.recording_id)
    return ctx.services.links.revoke(link.id, actor=ctx.person.name), link.recording_id


def subject_export(ctx: Ctx, number: str, reason: str) -> Response:
    """The CLI's export (manifest.json and WAVs) as a zip streamed while it is written: the
    recordings are checked (decrypted, nothing written) and the export audited first, so a
    refusal is a clear 4xx and the manifest is known; then each WAV is decrypted again segment
    by segment into the zip as it is sent. No decrypted audio touches the disk."""
    keys = ctx.services.keys
    if keys is None:
        raise HttpError(503, f"an export needs the private keys: {ctx.services.keys_problem}")
    try:
        prepared = ctx.services.subjects.prepare_export(
            number, keys, actor=ctx.person.name, reason=reason
        )
    except (NotAPhoneNumber, SubjectError) as exc:
        raise HttpError(400, str(exc)) from None
    entries = [
        zipstream.Entry("manifest.json", len(prepared.manifest_json), [prepared.manifest_json])
    ] + [zipstream.Entry(f.path, f.size, prepared.plaintext(f)) for f in prepared.files]
    return StreamingResponse(
        zipstream.zip_chunks(entries, datetime.now(UTC)),
        headers={
            "Content-Disposition": 'attachment; filename="subject-export.zip"',
            "Cache-Control": "no-store",
        },
        media_type="application/zip",
    )


def subject_erase(ctx: Ctx, number: str, reason: str) -> dict[str, Any]:
    try:
        result = ctx.services.subjects.erase(number, actor=ctx.person.name, reason=reason)
    except (NotAPhoneNumber, CustodyError) as exc:
        raise HttpError(400, str(exc)) from None
    return {
        "calls": result.calls,
        "deleted": result.deleted,
        "held_kept": result.held_kept,
        "left_on_other_hosts": result.elsewhere,
        "complete": result.complete,
    }


def number_key(ctx: Ctx, number: str) -> str:
    try:
        return ctx.services.numbers.lookup_key(number)
    except NotAPhoneNumber as exc:
        raise HttpError(400, f"number: {exc}") from None
