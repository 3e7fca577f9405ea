"""The HTTP API under ``/api/v1``: JSON, personal API tokens (``Authorization: Bearer``) or a
session (then with ``X-CSRF-Token`` on changes); the same authorisation and the same actions
as the pages. ``/api/v1/openapi.json`` describes it (:mod:`web.openapi`)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from web import actions, queries
from web.routing import Ctx, HttpError, field_int, field_text
from web.sharing import DEFAULT_HOURS


def me(ctx: Ctx) -> Response:
    p = ctx.person
    return JSONResponse(
        {"name": p.name, "role": p.role, "via": ctx.identity.via if ctx.identity else None}
    )


def _calls(ctx: Ctx, f: queries.CallFilter) -> Response:
    limit = field_limit(ctx)
    page = queries.search_calls(ctx.services, ctx.person, f, limit)
    return JSONResponse({"calls": page.summaries(ctx.services), "next": page.next_cursor})


def field_limit(ctx: Ctx) -> int:
    text = ctx.request.query_params.get("limit", "")
    if not text:
        return ctx.services.settings.page_size
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise HttpError(400, "limit: 1 to 500")
    return int(text)


def calls(ctx: Ctx) -> Response:
    try:
        return _calls(ctx, queries.CallFilter.from_params(ctx.request.query_params))
    except queries.BadQuery as exc:
        raise HttpError(400, str(exc)) from None


def calls_search(ctx: Ctx) -> Response:
    """Filters in the JSON body, so a phone number stays out of the URL."""
    body = {k: str(v) for k, v in ctx.body.items() if v is not None and k != "number"}
    number = field_text(ctx, "number", required=False, limit=40)
    if number:
        body["nk"] = actions.number_key(ctx, number)
    try:
        return _calls(ctx, queries.CallFilter.from_params(body))
    except queries.BadQuery as exc:
        raise HttpError(400, str(exc)) from None


def call(ctx: Ctx) -> Response:
    c = actions.visible_call(ctx, ctx.param("call_id"))
    d = queries.call_detail(ctx.services, ctx.person, c)
    return JSONResponse(
        {
            **d.summary,
            "evidence": d.evidence,
            "recordings": [queries.recording_dict(r) for r in d.recordings],
            "timeline": [
                {"at": at.isoformat(), "event": ev, "subject": sub} for at, ev, sub in d.timeline
            ],
        }
    )


def recordings(ctx: Ctx) -> Response:
    try:
        rows, cursor = queries.search_recordings(
            ctx.services, ctx.person, ctx.request.query_params, field_limit(ctx)
        )
    except queries.BadQuery as exc:
        raise HttpError(400, str(exc)) from None
    return JSONResponse({"recordings": rows, "next": cursor})


def recording(ctx: Ctx) -> Response:
    rec, _ = actions.visible_recording(ctx, ctx.param("recording_id"))
    return JSONResponse(
        {
            **queries.recording_dict(rec),
            "gone": queries.gone_why(ctx.services, rec),
            "marks": queries.waveform_marks(ctx.services, rec),
            "paused": queries.paused_stretches(ctx.services, rec),
        }
    )


def recording_audio(ctx: Ctx) -> Response:
    rec, _ = actions.visible_recording(ctx, ctx.param("recording_id"))
    return actions.audio_response(ctx, rec, ctx.person.name, download=True)


def _custody(verb: str):  # type: ignore[no-untyped-def]
    def act(ctx: Ctx) -> Response:
        rid = ctx.param("recording_id")
        result = actions.custody_act(ctx, rid, verb, field_text(ctx, "reason"))
        return JSONResponse({"id": rid, "result": result})

    act.__name__ = f"api_recording_{verb}"
    return act


recording_hold, recording_unhold, recording_delete = (
    _custody(v) for v in ("hold", "unhold", "delete")
)


def share_create(ctx: Ctx) -> Response:
    hours = field_int(ctx, "hours", DEFAULT_HOURS, 1, ctx.services.settings.share_link_max_hours)
    plays = field_int(ctx, "plays", None, 1, 1000)
    assert hours is not None
    link_id, url = actions.share(ctx, ctx.param("recording_id"), hours, plays)
    return JSONResponse({"id": link_id, "url": url, "hours": hours, "plays": plays}, 201)


def share_revoke(ctx: Ctx) -> Response:
    done, _ = actions.revoke_share(ctx, ctx.param("link_id"))
    return JSONResponse({"id": int(ctx.param("link_id")), "revoked": True, "changed": done})


def subject_export(ctx: Ctx) -> Response:
    return actions.subject_export(
        ctx, field_text(ctx, "number", limit=40), field_text(ctx, "reason")
    )


def subject_erase(ctx: Ctx) -> Response:
    return JSONResponse(
        actions.subject_erase(ctx, field_text(ctx, "number", limit=40), field_text(ctx, "reason"))
    )
