"""Every route is built by :func:`guarded`: it identifies the user, asks :mod:`web.authz`
whether the route's permission is held, checks the CSRF token of every state change made with
a session cookie, reads and limits the request body, and turns errors into one clear 4xx.
A route cannot skip any of it: there is no other way to register one (``web/app.py``)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from recorder.store.db import Database
from web import authz
from web.accounts import Person
from web.auth import Identity, client_address, identify, over_tls, run_touch
from web.services import Services
from web.tokens import same

log = logging.getLogger("callconsent.web")

MAX_BODY = 64 * 1024
STATE_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

templates = Environment(
    loader=PackageLoader("web", "templates"),
    autoescape=select_autoescape(default=True),
    auto_reload=False,  # the package's templates do not change while it runs: no stat per page
)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Ctx:
    """What a handler gets: the services, who asks (None on public routes), the form or
    JSON body already read and checked."""

    request: Request
    services: Services
    identity: Identity | None
    address: str
    api: bool
    form: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def person(self) -> Person:
        if self.identity is None:
            raise HttpError(401, "sign in first")
        return self.identity.person

    @property
    def tls(self) -> bool:
        return over_tls(self.request, self.services)

    def can(self, permission: str) -> bool:
        return self.identity is not None and authz.allowed(self.identity.person, permission)

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        page = templates.get_template(template).render(
            me=self.identity.person if self.identity else None,
            csrf=self.identity.csrf if self.identity else None,
            can=lambda p: self.identity is not None and authz.allowed(self.identity.person, p),
            keys_problem=None if self.services.keys else self.services.keys_problem,
            **values,
        )
        return HTMLResponse(page, status_code=status)


Handler = Callable[[Ctx], Response]

#: how long a short read (``guarded(..., short_read=True)``) may hold the event loop
INLINE_BUDGET_S = 0.010
#: SQLite virtual-machine steps between two looks at the budget (some tens of microseconds)
_BUDGET_STEPS = 2000


class _Budget(threading.local):
    deadline = 0.0  # time.monotonic() after which SQLite gives up; 0: no budget
    spent = False


_budget = _Budget()
inline_fallbacks = 0  # short reads that outgrew the budget and were run on a thread after all


def _over_budget() -> int:
    if _budget.deadline and time.monotonic() > _budget.deadline:
        _budget.spent = True
        return 1  # SQLite interrupts the statement
    return 0


def watch_short_reads(db: Database) -> None:
    """On SQLite, let a statement run within a budget: every connection looks at the budget
    of the thread using it (none but a short read's, on the event loop)."""
    if db.dialect != "sqlite":
        return

    @event.listens_for(db.engine, "checkout")
    def _watch(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_progress_handler(_over_budget, _BUDGET_STEPS)


def _within_budget(
    fn: Callable[[Request, Services], tuple[Response, Ctx | None]],
    request: Request,
    services: Services,
) -> tuple[Response, Ctx | None] | None:
    """``fn`` on this thread (the event loop's), its statements interrupted once the budget
    is spent: then None, and the caller runs it on a worker thread instead."""
    _budget.deadline, _budget.spent = time.monotonic() + INLINE_BUDGET_S, False
    try:
        return fn(request, services)
    except SQLAlchemyError:
        if not _budget.spent:
            raise
        global inline_fallbacks
        inline_fallbacks += 1
        return None
    finally:
        _budget.deadline = 0.0


def guarded(
    permission: str, handler: Handler, *, api: bool = False, short_read: bool = False
) -> Callable[..., Any]:
    """``short_read``: a GET that only reads, by statements that are short as a rule (the
    calls list: one page by an index). On SQLite it runs on the event loop, sparing the trip
    to a worker thread and back (0.2-0.3 ms a request, bench/web.py), for at most
    :data:`INLINE_BUDGET_S` of statements; one that takes longer is interrupted and the request
    is run again on a worker thread, as every other one is. Elsewhere (PostgreSQL: a network
    wait) it is an ordinary route."""
    if permission != authz.PUBLIC and permission not in authz.PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def admit(request: Request, services: Services) -> Ctx | Response:
        """Who asks and whether they may: a Ctx, or the redirect to the login page."""
        identity = identify(request, services)
        ctx = Ctx(request, services, identity, client_address(request, services), api)
        if permission != authz.PUBLIC:
            if identity is None:
                if api:
                    raise HttpError(401, "sign in or send 'Authorization: Bearer <token>'")
                return RedirectResponse("/login?next=" + quote(request.url.path), 303)
            if not authz.allowed(identity.person, permission):
                raise HttpError(403, f"your role ({identity.person.role}) may not do this")
        return ctx

    def admit_and_handle(request: Request, services: Services) -> tuple[Response, Ctx | None]:
        admitted = admit(request, services)
        if isinstance(admitted, Response):
            return admitted, None
        return handler(admitted), admitted

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        ctx: Ctx | None = None
        try:
            if len(request.url.query) > services.settings.max_query_bytes:
                raise HttpError(414, "the query string is too long")
            if request.method not in STATE_CHANGES:
                done = None
                if short_read and services.db.dialect == "sqlite":
                    done = _within_budget(admit_and_handle, request, services)
                # else one trip to a worker thread for the whole request (each costs a switch)
                response, ctx = done or await run_in_threadpool(admit_and_handle, request, services)
            else:
                admitted = await run_in_threadpool(admit, request, services)
                if isinstance(admitted, Response):
                    response = admitted
                else:
                    ctx = admitted
                    await _read_body(ctx)
                    identity = ctx.identity
                    if identity is not None and identity.via == "session":
                        sent = ctx.form.get("csrf_token") or request.headers.get("x-csrf-token", "")
                        if not identity.csrf or not same(sent, identity.csrf):
                            raise HttpError(403, "the form is stale or forged (CSRF token): reload")
                    response = await run_in_threadpool(handler, ctx)
        except HttpError as exc:
            response = error_response(request, exc.status, exc.message, api)
        if ctx is not None and ctx.identity is not None and ctx.identity.touch is not None:
            _after(response, BackgroundTask(run_touch, ctx.identity))
        # the request's log line once the response is out (0.1 ms: not the user's wait)
        _after(response, BackgroundTask(_log_request, request.method, _route(request), response))
        return response

    endpoint.permission = permission  # type: ignore[attr-defined]
    endpoint.__name__ = handler.__name__
    return endpoint


def _after(response: Response, task: BackgroundTask) -> None:
    """Run ``task`` once the response is sent (after any task the response has already)."""
    before = response.background
    response.background = BackgroundTasks([before, task]) if before is not None else task


async def _log_request(method: str, route: str, response: Response) -> None:
    """One line per request (on the event loop: a worker thread would cost more than it)."""
    log.info(
        "http_request",
        extra={"kv": {"method": method, "route": route, "status": response.status_code}},
    )


def _route(request: Request) -> str:
    """The route's template (``/s/{token}``), never the path: no token or id in the logs."""
    route = request.scope.get("route")
    return getattr(route, "path", "?")


async def _read_body(ctx: Ctx) -> None:
    request = ctx.request
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise HttpError(413, f"the request body is larger than {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HttpError(413, f"the request body is larger than {MAX_BODY} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        return
    if ctx.api and kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        ctx.body = data
    elif kind in FORM_TYPES and not ctx.api:
        form = await request.form()
        ctx.form = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        wanted = "application/json" if ctx.api else "a form (application/x-www-form-urlencoded)"
        raise HttpError(415, f"send {wanted}, not {kind or 'no content type'}")


def error_response(request: Request, status: int, message: str, api: bool) -> Response:
    if api:
        return JSONResponse({"error": message, "status": status}, status_code=status)
    page = templates.get_template("error.html").render(
        status=status, message=message, me=None, csrf=None, can=lambda p: False, keys_problem=None
    )
    return HTMLResponse(page, status_code=status)


def field_text(ctx: Ctx, name: str, *, required: bool = True, limit: int = 500) -> str:
    """A form field (pages) or JSON member (API), trimmed; 400 when missing or too long."""
    value = ctx.body.get(name) if ctx.api else ctx.form.get(name)
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise HttpError(400, f"{name} is required")
    if len(text) > limit:
        raise HttpError(400, f"{name}: at most {limit} characters")
    return text


def field_int(ctx: Ctx, name: str, default: int | None, low: int, high: int) -> int | None:
    text = field_text(ctx, name, required=False, limit=12)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"{name}: expected a whole number") from None
    if not low <= value <= high:
        raise HttpError(400, f"{name}: expected {low} to {high}")
    return value
