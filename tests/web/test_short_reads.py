"""The calls list (page and API) runs on the event loop on SQLite, sparing the trip to a
worker thread, within a budget (web.routing.guarded's ``short_read``): a statement that
outgrows it is interrupted and the request is served from a worker thread after all, with
the same answer. On PostgreSQL (a network wait) it always goes to a worker thread."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest
from conftest import ON_BOTH_STORES, World

from web import routing


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of each function run on a worker thread (run_in_threadpool)."""
    ran: list[str] = []
    real = routing.run_in_threadpool

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(routing, "run_in_threadpool", spy)
    return ran


def ids(page: str) -> list[str]:
    return re.findall(r'href="/calls/([0-9a-f-]{36})"', page)


@ON_BOTH_STORES
def test_the_calls_list_is_a_short_read_on_sqlite_only(
    world: World, threads: list[str], store: str
) -> None:
    c = world.client("supervisor")
    page = c.get("/calls")
    api = c.get("/api/v1/calls")
    assert page.status_code == api.status_code == 200
    assert sorted(ids(page.text)) == sorted(world.calls.values())
    assert len(api.json()["calls"]) == 2
    assert threads == ([] if store == "sqlite" else ["admit_and_handle"] * 2)
    threads.clear()
    assert c.get(f"/calls/{world.calls['alice']}").status_code == 200
    assert threads == ["admit_and_handle"]  # any other route: a worker thread


def test_a_short_read_over_its_budget_is_served_from_a_worker_thread(
    world: World, threads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = world.client("supervisor")
    before = routing.inline_fallbacks
    monkeypatch.setattr(routing, "INLINE_BUDGET_S", -1.0)  # spent before the first statement
    monkeypatch.setattr(routing, "_BUDGET_STEPS", 1)  # looked at on every step: tiny tables
    page = c.get("/calls")
    assert page.status_code == 200 and sorted(ids(page.text)) == sorted(world.calls.values())
    assert threads == ["admit_and_handle"] and routing.inline_fallbacks == before + 1


def test_the_budget_holds_only_on_the_thread_that_set_it(world: World) -> None:
    """A worker thread's statements are never interrupted by the event loop's budget."""
    seen: list[int] = []
    routing._budget.deadline = 1.0  # long past, on this thread only
    try:
        worker = threading.Thread(target=lambda: seen.append(routing._over_budget()))
        worker.start()
        worker.join()
        assert seen == [0] and routing._over_budget() == 1
    finally:
        routing._budget.deadline, routing._budget.spent = 0.0, False


def test_one_log_line_per_request_written_after_the_response(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    c = world.client("supervisor")
    with caplog.at_level(logging.INFO, logger="callconsent.web"):
        assert c.get("/calls").status_code == 200  # on the event loop
        assert c.get(f"/calls/{world.calls['bob']}").status_code == 200  # a worker thread
        assert c.get("/calls/not-a-call").status_code == 404
        assert c.post("/calls", data={"number": "1"}).status_code == 403  # no CSRF token
    lines = [r.kv for r in caplog.records if r.getMessage() == "http_request"]  # type: ignore[attr-defined]
    assert lines == [
        {"method": "GET", "route": "/calls", "status": 200},
        {"method": "GET", "route": "/calls/{call_id}", "status": 200},
        {"method": "GET", "route": "/calls/{call_id}", "status": 404},
        {"method": "POST", "route": "/calls", "status": 403},
    ]
