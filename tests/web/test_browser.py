"""A real browser: Debian's chromium driven by Playwright (never `playwright install`), against
`callconsent web` served by uvicorn on a free port. Skipped cleanly without chromium or the
playwright package. Every page visited is saved as a screenshot under the test's tmp dir; a
failure names the last one."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from conftest import PASSWORD, World

CHROMIUM = os.environ.get("CALLCONSENT_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed"
)
pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
        reason=f"no chromium at {CHROMIUM} (apt-get install chromium; `make test` does)",
    ),
    pytest.mark.slow,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def base_url(world: World) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            world.app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


class Browser:
    """One chromium; pages that screenshot themselves into ``shots``."""

    def __init__(self, pw: object, shots: Path) -> None:
        self.browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)  # type: ignore[attr-defined]
        self.shots = shots
        self.n = 0
        self.last = "none yet"

    def context(self) -> object:
        return self.browser.new_context()

    def shot(self, page: object, name: str) -> None:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        self.last = str(path)

    def check(self, ok: bool, what: str) -> None:
        assert ok, f"{what} (last screenshot: {self.last})"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Browser]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as pw:
        b = Browser(pw, shots)
        try:
            yield b
        finally:
            b.browser.close()


def wait_until(page: object, expression: str, timeout_s: float = 15) -> None:
    """Poll ``expression`` (wait_for_function would need 'unsafe-eval', which our CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def log_in(b: Browser, page: object, base: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")  # type: ignore[attr-defined]
    page.fill("input[name=name]", name)  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("form[action='/login'] button")  # type: ignore[attr-defined]
    b.shot(page, f"login-{name}")


def test_search_open_play_seek_share_revoke(world: World, base_url: str, chromium: Browser) -> None:
    b, page = chromium, chromium.context().new_page()  # type: ignore[attr-defined]
    log_in(b, page, base_url, "sam")
    b.check(page.url.endswith("/calls"), "after login the calls page opens")
    page.fill("input[name=number]", "0151 12345678")  # national notation
    page.click("form.filters button")
    b.shot(page, "calls-by-number")
    b.check("12345678" not in page.url, "the number is not in the URL")
    b.check(page.locator("#calls tbody tr").count() == 2, "both calls of that number are listed")
    page.click(f"a[href='/calls/{world.calls['alice']}']")
    b.shot(page, "call")
    b.check("decision: granted" in page.content(), "the evidence is shown")
    page.click(f"a[href='/recordings/{world.recordings['alice']}']")
    b.shot(page, "player")
    ranges: list[tuple[str | None, int]] = []
    page.on(
        "response",
        lambda r: (
            ranges.append((r.request.headers.get("range"), r.status)) if "/audio" in r.url else None
        ),
    )
    page.evaluate("document.getElementById('player').play()")
    wait_until(page, "document.getElementById('player').currentTime > 0.3")
    duration = page.evaluate("document.getElementById('player').duration")
    b.check(abs(duration - 15.0) < 0.1, f"duration {duration} matches the recording's 15 s")
    page.evaluate("document.getElementById('player').currentTime = 7.5")
    wait_until(page, "document.getElementById('player').currentTime > 7.6")
    b.shot(page, "player-seeked")
    b.check(
        any(status == 206 and rng and not rng.startswith("bytes=0-") for rng, status in ranges),
        f"a Range request served the seek: {ranges}",
    )
    page.click("#share")
    b.shot(page, "share-created")
    url = page.input_value("#new-link input")
    stranger = b.context().new_page()  # type: ignore[attr-defined]
    stranger.goto(url)
    b.shot(stranger, "shared-player")
    stranger.evaluate("document.getElementById('player').play()")
    wait_until(stranger, "document.getElementById('player').currentTime > 0.3")
    b.check(
        "12345678" not in stranger.content() and "…78" not in stranger.content(),
        "no number on the shared page",
    )
    page.click("#links button.revoke")
    b.shot(page, "share-revoked")
    refused = stranger.goto(url)
    b.shot(stranger, "shared-after-revoke")
    b.check(
        refused.status == 410 and "revoked" in stranger.content(), "the revoked link is refused"
    )


def test_supervisor_has_no_delete_and_gets_403_from_the_api(
    world: World, base_url: str, chromium: Browser
) -> None:
    b, page = chromium, chromium.context().new_page()  # type: ignore[attr-defined]
    log_in(b, page, base_url, "sam")
    page.goto(f"{base_url}/recordings/{world.recordings['alice']}")
    b.shot(page, "supervisor-recording")
    b.check(page.locator("#delete").count() == 0, "no delete button for a supervisor")
    csrf = page.input_value("input[name=csrf_token]")
    r = page.request.delete(
        f"{base_url}/api/v1/recordings/{world.recordings['alice']}",
        data={"reason": "x"},
        headers={"X-CSRF-Token": csrf},
    )
    b.check(r.status == 403, f"the API refuses the supervisor: {r.status}")


def test_an_agent_cannot_open_another_agents_call(
    world: World, base_url: str, chromium: Browser
) -> None:
    b, page = chromium, chromium.context().new_page()  # type: ignore[attr-defined]
    log_in(b, page, base_url, "alice")
    response = page.goto(f"{base_url}/calls/{world.calls['bob']}")
    b.shot(page, "agent-other-call")
    b.check(
        response.status == 403 and "not yours" in page.content(), "bob's call is refused to alice"
    )


def test_five_wrong_passwords_lock_the_account(
    world: World, base_url: str, chromium: Browser
) -> None:
    b, page = chromium, chromium.context().new_page()  # type: ignore[attr-defined]
    for i in range(5):
        log_in(b, page, base_url, "dora", f"wrong password {i}")
    b.check("locked" in page.content(), "the fifth failure locks the account")
    log_in(b, page, base_url, "dora", PASSWORD)
    b.check(
        "locked" in page.content() and page.url.endswith("/login"),
        "the right password is refused while locked",
    )
