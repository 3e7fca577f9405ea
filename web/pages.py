"""The server-rendered pages (usable without JavaScript). Each handler is registered in
``web/app.py`` with its permission; object access goes through :mod:`web.actions`."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from recorder.store import audit
from web import actions, dashboard, queries, totp
from web.accounts import ROLES, AccountError
from web.auth import SESSION_COOKIE, LoginRefused, Sessions, log_in
from web.csp import content_security_policy
from web.routing import Ctx, HttpError, field_int, field_text
from web.sharing import DEFAULT_HOURS, TICKET_HOURS, ShareRefused
from web.tokens import same

LOGIN_COOKIE = "cc_login"
PLAY_COOKIE = "cc_play"


def _cookie(
    ctx: Ctx, response: Response, name: str, value: str, max_age: int | None, path: str = "/"
) -> None:
    secure = {"always": True, "never": False}.get(ctx.services.settings.secure_cookies, ctx.tls)
    response.set_cookie(
        name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict"
    )


def home(ctx: Ctx) -> Response:
    return RedirectResponse("/calls", 303)


def login_form(ctx: Ctx) -> Response:
    token = secrets.token_urlsafe(32)
    nxt = ctx.request.query_params.get("next", "/calls")
    response = ctx.render("login.html", login_token=token, next=_safe_next(nxt), error=None)
    _cookie(ctx, response, LOGIN_COOKIE, token, 900)
    return response


def _safe_next(nxt: str) -> str:
    """Back to a page of ours only: a path, never ``//host`` or ``/\\host`` (browsers read
    both as another site)."""
    ours = nxt.startswith("/") and not nxt.startswith(("//", "/\\")) and "\\" not in nxt
    return nxt if ours and len(nxt) < 200 else "/calls"


def login(ctx: Ctx) -> Response:
    sent, cookie = ctx.form.get("login_token", ""), ctx.request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not same(sent, cookie):
        raise HttpError(403, "the login form is stale: reload the page")
    name = field_text(ctx, "name", limit=64)
    password = field_text(ctx, "password", limit=1024)
    code = field_text(ctx, "code", required=False, limit=10)
    try:
        person = log_in(
            ctx.services, ctx.request.app.state.throttle, name, password, code, ctx.address
        )
    except LoginRefused as exc:
        token = secrets.token_urlsafe(32)
        response = ctx.render("login.html", 401, login_token=token, next="/calls", error=str(exc))
        _cookie(ctx, response, LOGIN_COOKIE, token, 900)
        return response
    raw, _ = Sessions(ctx.services).create(person, ctx.address)
    response = RedirectResponse(_safe_next(ctx.form.get("next", "/calls")), 303)
    _cookie(ctx, response, SESSION_COOKIE, raw, None)
    response.delete_cookie(LOGIN_COOKIE)
    return response


def logout(ctx: Ctx) -> Response:
    raw = ctx.request.cookies.get(SESSION_COOKIE)
    if raw:
        Sessions(ctx.services).revoke(raw)
    with ctx.services.db.write() as s:
        audit.append(
            s,
            ctx.services.ctx,
            actor=ctx.person.name,
            action="web.logout",
            subject_type="user",
            subject_id=ctx.person.name,
            details={"address": ctx.address},
        )
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def calls(ctx: Ctx) -> Response:
    try:
        f = queries.CallFilter.from_params(ctx.request.query_params)
        page = queries.search_calls(ctx.services, ctx.person, f, ctx.services.settings.page_size)
    except queries.BadQuery as exc:
        raise HttpError(400, str(exc)) from None
    more = "/calls?" + urlencode(f.params(after=page.next_cursor)) if page.next_cursor else None
    return ctx.render(
        "calls.html",
        f=f,
        rows=page.rows_html(ctx.services),
        more=more,
        statuses=queries.STATUSES,
        directions=queries.DIRECTIONS,
    )


def calls_search(ctx: Ctx) -> Response:
    """The filter form is POSTed so a phone number never appears in a URL: it becomes its
    keyed hash (``nk``), and the browser is sent to the GET page with that."""
    params = {
        k: v
        for k, v in ctx.form.items()
        if k in ("since", "until", "campaign", "direction", "consent", "agent") and v
    }
    number = field_text(ctx, "number", required=False, limit=40)
    if number:
        params["nk"] = actions.number_key(ctx, number)
    return RedirectResponse("/calls?" + urlencode(params), 303)


def call(ctx: Ctx) -> Response:
    c = actions.visible_call(ctx, ctx.param("call_id"))
    detail = queries.call_detail(ctx.services, ctx.person, c)
    gone = {r.id: queries.gone_why(ctx.services, r) for r in detail.recordings}
    return ctx.render("call.html", d=detail, gone=gone)


def recording(ctx: Ctx) -> Response:
    rec, c = actions.visible_recording(ctx, ctx.param("recording_id"))
    links = ctx.services.links.of_recording(rec.id)
    nonce = secrets.token_urlsafe(16)
    response = ctx.render(
        "recording.html",
        rec=rec,
        call=c,
        gone=queries.gone_why(ctx.services, rec),
        links=links,
        default_hours=DEFAULT_HOURS,
        max_hours=ctx.services.settings.share_link_max_hours,
        new_link=None,
        style_nonce=nonce,
        markers=queries.waveform_marks(ctx.services, rec),
        paused=queries.paused_stretches(ctx.services, rec),
        clock=queries.clock,
    )
    response.headers["content-security-policy"] = content_security_policy(nonce)
    return response


def recording_audio(ctx: Ctx) -> Response:
    rec, _ = actions.visible_recording(ctx, ctx.param("recording_id"))
    download = ctx.request.query_params.get("download") == "1"
    if download and not ctx.can("recording.download"):
        raise HttpError(403, "your role may play recordings, not download them")
    return actions.audio_response(ctx, rec, ctx.person.name, download=download)


def recording_share(ctx: Ctx) -> Response:
    hours = field_int(ctx, "hours", DEFAULT_HOURS, 1, ctx.services.settings.share_link_max_hours)
    plays = field_int(ctx, "plays", None, 1, 1000)
    assert hours is not None
    link_id, url = actions.share(ctx, ctx.param("recording_id"), hours, plays)
    rec, c = actions.visible_recording(ctx, ctx.param("recording_id"))
    return ctx.render(
        "recording.html",
        rec=rec,
        call=c,
        gone=None,
        links=ctx.services.links.of_recording(rec.id),
        default_hours=DEFAULT_HOURS,
        max_hours=ctx.services.settings.share_link_max_hours,
        new_link=(link_id, url),
    )


def share_revoke(ctx: Ctx) -> Response:
    _, rid = actions.revoke_share(ctx, ctx.param("link_id"))
    return RedirectResponse(f"/recordings/{rid}", 303)


def _custody(verb: str):  # type: ignore[no-untyped-def]
    def act(ctx: Ctx) -> Response:
        result = actions.custody_act(
            ctx, ctx.param("recording_id"), verb, field_text(ctx, "reason")
        )
        return ctx.render(
            "done.html", title=f"{verb}: {result}", back=f"/recordings/{ctx.param('recording_id')}"
        )

    act.__name__ = f"recording_{verb}"
    return act


recording_hold, recording_unhold, recording_delete = (
    _custody(v) for v in ("hold", "unhold", "delete")
)


def subjects(ctx: Ctx) -> Response:
    return ctx.render("subjects.html")


def subjects_export(ctx: Ctx) -> Response:
    return actions.subject_export(
        ctx, field_text(ctx, "number", limit=40), field_text(ctx, "reason")
    )


def subjects_erase(ctx: Ctx) -> Response:
    result = actions.subject_erase(
        ctx, field_text(ctx, "number", limit=40), field_text(ctx, "reason")
    )
    return ctx.render("done.html", title="erasure", result=result, back="/subjects")


def audit_page(ctx: Ctx) -> Response:
    q = ctx.request.query_params
    before = q.get("before", "")
    if before and not before.isdigit():
        raise HttpError(400, "before: expected a row number")
    action, actor = q.get("action", "")[:64] or None, q.get("actor", "")[:64] or None
    rows = queries.audit_rows(ctx.services, action, actor, int(before) if before else None, 100)
    check = ctx.services.audit_check.get()  # the whole chain, in the background (web.kept)
    more = None
    if len(rows) == 100:
        more = "/audit?" + urlencode(
            {k: v for k, v in (("action", action), ("actor", actor), ("before", rows[-1].seq)) if v}
        )
    return ctx.render("audit.html", rows=rows, check=check, action=action, actor=actor, more=more)


def dashboard_page(ctx: Ctx) -> Response:
    services = ctx.services
    data = dashboard.collect(services.db, services.dashboard_totals, services.facts)
    return ctx.render("dashboard.html", data=data)


def users(ctx: Ctx) -> Response:
    accounts = ctx.services.accounts
    return ctx.render(
        "users.html", people=accounts.all(), roles=ROLES, tokens=accounts.tokens(), new_token=None
    )


def users_change(ctx: Ctx) -> Response:
    """One form per user action: add, disable, enable, role, token, revoke_token,
    reset_totp."""
    accounts, me = ctx.services.accounts, ctx.person.name
    verb = field_text(ctx, "action", limit=20)
    new_token = None
    try:
        if verb == "add":
            accounts.add(
                field_text(ctx, "name", limit=64),
                field_text(ctx, "role", limit=16),
                field_text(ctx, "password", limit=1024),
                actor=me,
            )
        elif verb in ("disable", "enable"):
            accounts.set_disabled(field_text(ctx, "name", limit=64), verb == "disable", actor=me)
        elif verb == "role":
            accounts.set_role(
                field_text(ctx, "name", limit=64), field_text(ctx, "role", limit=16), actor=me
            )
        elif verb == "token":
            days = field_int(ctx, "days", 90, 1, 366)
            assert days is not None
            new_token = accounts.create_token(
                field_text(ctx, "name", limit=64),
                field_text(ctx, "label", limit=64),
                days,
                actor=me,
            )
        elif verb == "revoke_token":
            accounts.revoke_token(field_int(ctx, "token_id", 0, 1, 10**12) or 0, actor=me)
        elif verb == "reset_totp":
            name = field_text(ctx, "name", limit=64)
            if not totp.reset(ctx.services, name, actor=me, address=ctx.address):
                raise HttpError(409, f"{name} has no second factor")
        else:
            raise HttpError(
                400, "action: add, disable, enable, role, token, revoke_token or reset_totp"
            )
    except AccountError as exc:
        raise HttpError(409, str(exc)) from None
    except totp.TotpRefused as exc:
        raise HttpError(exc.status, str(exc)) from None
    return ctx.render(
        "users.html",
        people=accounts.all(),
        roles=ROLES,
        tokens=accounts.tokens(),
        new_token=new_token,
    )


def account(ctx: Ctx, notice: str | None = None, status: int = 200) -> Response:
    """Who I am, and my TOTP second factor: a new secret to enrol (its URI and QR code), or
    the form that turns it off."""
    me = ctx.services.accounts.get(ctx.person.name)  # now, not as the session read it
    assert me is not None
    secret = None if me.has_totp else totp.new_secret()
    uri = totp.uri(secret, me.name) if secret else None
    return ctx.render(
        "account.html",
        status,
        person=me,
        secret=secret,
        uri=uri,
        qr=totp.qr_svg(uri) if uri else None,
        notice=notice,
    )


def account_totp(ctx: Ctx) -> Response:
    """``action=enrol`` (the secret the page showed, a current code, the password) or
    ``action=disable`` (the password and a current code)."""
    verb = field_text(ctx, "action", limit=10)
    password = field_text(ctx, "password", limit=1024)
    code = field_text(ctx, "code", limit=10)
    name = ctx.person.name
    try:
        if verb == "enrol":
            totp.enrol(
                ctx.services, name, field_text(ctx, "secret", limit=64), password, code, ctx.address
            )
            notice = "The second factor is on: log in with a code from now on."
        elif verb == "disable":
            totp.disable(ctx.services, name, password, code, ctx.address)
            notice = "The second factor is off."
        else:
            raise HttpError(400, "action: enrol or disable")
    except totp.TotpRefused as exc:
        raise HttpError(exc.status, str(exc)) from None
    return account(ctx, notice)


def share_page(ctx: Ctx) -> Response:
    """A share link opens the player only: campaign and date, no number, no evidence. Opening
    it counts one play; the audio is served to the browser that opened it (a ticket cookie)."""
    token = ctx.param("token")
    try:
        link, ticket = ctx.services.links.play(token, ctx.address)
    except ShareRefused as exc:
        raise HttpError(410, str(exc)) from None
    found = queries.load_recording(ctx.services, link.recording_id)
    assert found is not None
    rec, c = found
    response = ctx.render("share.html", rec=rec, campaign=c.campaign, token=token, link=link)
    _cookie(ctx, response, PLAY_COOKIE, ticket, TICKET_HOURS * 3600, path=f"/s/{token}")
    return response


def share_audio(ctx: Ctx) -> Response:
    token = ctx.param("token")
    try:
        link = ctx.services.links.check(token)
    except ShareRefused as exc:
        raise HttpError(410, str(exc)) from None
    if not ctx.services.links.ticket_holds(link.id, ctx.request.cookies.get(PLAY_COOKIE, "")):
        raise HttpError(403, "open the link's page first")
    found = queries.load_recording(ctx.services, link.recording_id)
    assert found is not None
    return actions.audio_response(ctx, found[0], f"share-link-{link.id}")
