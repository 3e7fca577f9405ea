"""The ASGI application: every route in one table with its permission (``ROUTES``), each
built by :func:`web.routing.guarded`; security headers on every response; static files from
the package. ``callconsent web`` serves it with uvicorn."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web import api, pages
from web.auth import AddressThrottle
from web.authz import PUBLIC, SIGNED_IN
from web.csp import content_security_policy
from web.openapi import document
from web.routing import Ctx, guarded, watch_short_reads
from web.services import Services

SECURITY_HEADERS = {
    "content-security-policy": content_security_policy(),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    permission: str
    handler: Callable[[Ctx], Response]
    summary: str
    api: bool = False
    short_read: bool = False  # see web.routing.guarded


def _openapi(ctx: Ctx) -> Response:
    return JSONResponse(document([e for e in ROUTES if e.api]))


ROUTES: list[Entry] = [
    Entry("GET", "/", SIGNED_IN, pages.home, "home: the calls"),
    Entry("GET", "/login", PUBLIC, pages.login_form, "the login form"),
    Entry("POST", "/login", PUBLIC, pages.login, "log in"),
    Entry("POST", "/logout", SIGNED_IN, pages.logout, "log out"),
    Entry(
        "GET", "/calls", "calls.list", pages.calls, "calls, filtered, newest first", short_read=True
    ),
    Entry("POST", "/calls", "calls.list", pages.calls_search, "filter calls (by number too)"),
    Entry("GET", "/calls/{call_id}", "calls.view", pages.call, "a call's evidence"),
    Entry("GET", "/recordings/{recording_id}", "recording.play", pages.recording, "player"),
    Entry(
        "GET", "/recordings/{recording_id}/audio", "recording.play", pages.recording_audio, "audio"
    ),
    Entry(
        "POST",
        "/recordings/{recording_id}/share",
        "recording.share",
        pages.recording_share,
        "share",
    ),
    Entry(
        "POST", "/shares/{link_id}/revoke", "recording.share", pages.share_revoke, "revoke a link"
    ),
    Entry(
        "POST", "/recordings/{recording_id}/hold", "recording.hold", pages.recording_hold, "hold"
    ),
    Entry(
        "POST",
        "/recordings/{recording_id}/unhold",
        "recording.hold",
        pages.recording_unhold,
        "unhold",
    ),
    Entry(
        "POST",
        "/recordings/{recording_id}/delete",
        "recording.delete",
        pages.recording_delete,
        "delete",
    ),
    Entry("GET", "/subjects", "subject.export", pages.subjects, "data-subject requests"),
    Entry(
        "POST", "/subjects/export", "subject.export", pages.subjects_export, "subject export (zip)"
    ),
    Entry("POST", "/subjects/erase", "subject.erase", pages.subjects_erase, "subject erasure"),
    Entry("GET", "/audit", "audit.view", pages.audit_page, "the audit log and its verification"),
    Entry("GET", "/dashboard", "dashboard.view", pages.dashboard_page, "dashboard"),
    Entry("GET", "/account", SIGNED_IN, pages.account, "my account: the TOTP second factor"),
    Entry(
        "POST", "/account/totp", SIGNED_IN, pages.account_totp, "turn my TOTP second factor on/off"
    ),
    Entry("GET", "/admin/users", "users.manage", pages.users, "users and tokens"),
    Entry("POST", "/admin/users", "users.manage", pages.users_change, "change users and tokens"),
    Entry("GET", "/s/{token}", PUBLIC, pages.share_page, "a share link's player"),
    Entry("GET", "/s/{token}/audio", PUBLIC, pages.share_audio, "a share link's audio"),
    # -- API ------------------------------------------------------------------------------
    Entry("GET", "/api/v1/openapi.json", PUBLIC, _openapi, "this document", True),
    Entry("GET", "/api/v1/me", SIGNED_IN, api.me, "who the token or session is", True),
    Entry("GET", "/api/v1/calls", "calls.list", api.calls, "search calls", True, short_read=True),
    Entry(
        "POST",
        "/api/v1/calls/search",
        "calls.list",
        api.calls_search,
        "search calls by number",
        True,
    ),
    Entry(
        "GET", "/api/v1/calls/{call_id}", "calls.view", api.call, "a call: evidence, timeline", True
    ),
    Entry("GET", "/api/v1/recordings", "calls.list", api.recordings, "search recordings", True),
    Entry(
        "GET",
        "/api/v1/recordings/{recording_id}",
        "recording.play",
        api.recording,
        "a recording",
        True,
    ),
    Entry(
        "GET",
        "/api/v1/recordings/{recording_id}/audio",
        "recording.download",
        api.recording_audio,
        "audio (Range)",
        True,
    ),
    Entry(
        "POST",
        "/api/v1/recordings/{recording_id}/hold",
        "recording.hold",
        api.recording_hold,
        "hold",
        True,
    ),
    Entry(
        "POST",
        "/api/v1/recordings/{recording_id}/unhold",
        "recording.hold",
        api.recording_unhold,
        "unhold",
        True,
    ),
    Entry(
        "DELETE",
        "/api/v1/recordings/{recording_id}",
        "recording.delete",
        api.recording_delete,
        "delete",
        True,
    ),
    Entry(
        "POST",
        "/api/v1/recordings/{recording_id}/shares",
        "recording.share",
        api.share_create,
        "share link",
        True,
    ),
    Entry(
        "DELETE",
        "/api/v1/shares/{link_id}",
        "recording.share",
        api.share_revoke,
        "revoke a share link",
        True,
    ),
    Entry(
        "POST",
        "/api/v1/subjects/export",
        "subject.export",
        api.subject_export,
        "subject export (zip)",
        True,
    ),
    Entry(
        "POST",
        "/api/v1/subjects/erase",
        "subject.erase",
        api.subject_erase,
        "subject erasure",
        True,
    ),
]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response, and ``Cache-Control: no-store`` to
    everything but the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"cache-control" or not static
                ]
                present = {k.lower() for k, _ in headers}
                headers += [  # a page may set a stricter CSP of its own (the player's nonce)
                    (k.encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.encode() not in present
                ]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"max-age=3600" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Everything made at start (modules, the store's engine, phone number metadata, the
    routes) is kept out of the garbage collector's full passes: each one walked it all and
    stalled a request 50-120 ms (bench/web.py's p99)."""
    gc.collect()
    gc.freeze()
    yield


def build(services: Services) -> Starlette:
    routes: list[Any] = [
        Route(
            e.path,
            guarded(e.permission, e.handler, api=e.api, short_read=e.short_read),
            methods=[e.method],
        )
        for e in ROUTES
    ]
    routes.append(Mount("/static", StaticFiles(packages=[("web", "static")]), name="static"))
    app = Starlette(routes=routes, lifespan=_lifespan)
    app.state.services = services
    watch_short_reads(services.db)
    app.state.throttle = AddressThrottle(services.db)
    app.add_middleware(SecurityHeaders)
    return app
