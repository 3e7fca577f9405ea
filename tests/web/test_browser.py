"""The web console in a real browser: Debian's headless chromium, driven by Playwright, against
`callconsent web` running as its own process (tests/support/browser_rig.py). Every page
visited is a screenshot under the test's temp dir; a failure names the last one, and a
screenshot of every page open at that moment."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg
import pytest
from browser_rig import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    PROMPT_SHA256,
    Shots,
    Site,
    browser_missing,
    site,
)
from conftest import next_code

MISSING = browser_missing()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.slow]

VIEWPORT = {"width": 1200, "height": 800}
TIMEOUT_MS = 20_000


class Ui:
    """Browser contexts (one per person), each visit and form post screenshotted."""

    def __init__(self, playwright: Any, browser: Any, web: Site, shots: Shots) -> None:
        self.playwright, self.browser, self.site, self.shots = playwright, browser, web, shots
        self.contexts: list[Any] = []

    def page(self) -> Any:
        """A page in a fresh context: no cookies, no session."""
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.site.url)
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        return context.new_page()

    def goto(self, page: Any, path: str, name: str, doc: str | None = None) -> Any:
        response = page.goto(path)
        self.shots.take(page, name, doc)
        return response

    def submit(self, page: Any, selector: str, name: str, doc: str | None = None) -> Any:
        """Click a form's button and wait for the page it leads to."""
        with page.expect_navigation() as nav:
            page.click(selector)
        self.shots.take(page, name, doc)
        return nav.value

    def log_in(self, page: Any, name: str, password: str = PASSWORD, code: str = "") -> Any:
        self.goto(page, "/login", f"login-{name}")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", password)
        if code:
            page.fill("input[name=code]", code)
        return self.submit(page, "form.stack button", f"after-login-{name}")

    def check(self, condition: object, message: str) -> None:
        assert condition, f"{message} (screenshot: {self.shots.last})"

    def close(self) -> None:
        for context in self.contexts:
            context.close()

    def open_pages(self) -> list[Any]:
        return [p for context in self.contexts for p in context.pages if not p.is_closed()]


class FailureShots:
    """A pytest plugin: when a browser test fails, screenshot every page still open and name
    the files in the failure message."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        ui = getattr(item, "funcargs", {}).get("ui") if call.when == "call" else None
        names: list[str] = []
        if ui is not None and call.excinfo is not None:
            for i, page in enumerate(ui.open_pages()):
                try:
                    names.append(str(ui.shots.take(page, f"FAILED-page{i + 1}")))
                except Exception as exc:  # a crashed page has no picture
                    names.append(f"(page {i + 1}: no screenshot: {exc})")
        outcome = yield
        report = outcome.get_result()
        if names and report.failed and hasattr(report.longrepr, "reprcrash"):
            text = "screenshots at failure: " + ", ".join(names)
            report.longrepr.addsection("browser", text)
            crash = report.longrepr.reprcrash
            if crash is not None:
                crash.message += f" [{text}]"


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def web(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The site on SQLite, then on the PostgreSQL the suite starts (a database of its own)."""
    root = tmp_path_factory.mktemp(f"web-site-{request.param}")
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(pg.fresh_database(request.getfixturevalue("pg_server")))
        running = stack.enter_context(site(root, database_url=url))
        yield running
    log = running.server.log.read_text(errors="replace")
    assert "Traceback" not in log, f"callconsent web logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def chromium(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    from playwright.sync_api import sync_playwright

    if not request.config.pluginmanager.has_plugin("callconsent-browser-shots"):
        request.config.pluginmanager.register(FailureShots(), "callconsent-browser-shots")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield p, browser
        browser.close()


@pytest.fixture
def ui(chromium: tuple[Any, Any], web: Site, tmp_path: Path) -> Iterator[Ui]:
    helper = Ui(chromium[0], chromium[1], web, Shots(tmp_path / "screenshots"))
    yield helper
    helper.close()


def pause(web: Site, recording_id: str, start_s: float, end_s: float) -> tuple[float, float]:
    """An agent's pause and resume of a recording, written as the call book writes them
    (the ledger's audit rows), at these seconds into it."""
    from datetime import timedelta

    from callconsent import config as config_mod
    from callconsent.app import App
    from recorder.store.models import Recording

    app = App.open(config_mod.load(web.config))
    try:
        with app.db.read() as s:
            started = s.get(Recording, recording_id).started_at
        for seconds, paused in ((start_s, True), (end_s, False)):
            app.ledger._clock = lambda at=started + timedelta(seconds=seconds): at  # type: ignore[method-assign]
            app.ledger.recording_paused(recording_id, paused, "alice")
    finally:
        app.close()
    return start_s, end_s


def table_rows(page: Any) -> list[str]:
    return [r.inner_text() for r in page.locator("#calls tbody tr").all()]


def play(page: Any, beyond_s: float) -> None:
    """Start the player and wait until it has really played past ``beyond_s`` seconds."""
    page.evaluate("() => document.getElementById('player').play()")
    page.wait_for_function("t => document.getElementById('player').currentTime > t", arg=beyond_s)


def player_state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "() => { const a = document.getElementById('player'); return {time: a.currentTime,"
        " duration: a.duration, paused: a.paused, error: a.error && a.error.message}; }"
    )


def test_log_in_find_a_call_by_its_national_number_and_see_the_evidence(ui: Ui) -> None:
    page = ui.page()
    ui.log_in(page, "sam")
    ui.check(page.url.endswith("/calls"), f"after login the browser is at {page.url}")
    ui.check("sam (supervisor)" in page.inner_text(".who"), "the header names who is logged in")
    ui.check(len(table_rows(page)) == 3, f"sam sees every call: {table_rows(page)}")

    page.fill("input[name=number]", "0151 1234 5678")  # +49 151 12345678, national notation
    ui.submit(page, ".filters button", "calls-by-number", doc="calls.png")
    rows = table_rows(page)
    ui.check(len(rows) == 1 and "alice" in rows[0], f"one call of alice's matches: {rows}")
    ui.check("nk=" in page.url and "12345678" not in page.url, f"no number in {page.url}")
    ui.check("12345678" not in rows[0] and "…78" in rows[0], f"the number masked: {rows[0]}")

    ui.submit(page, "#calls tbody a", "call-evidence", doc="call.png")
    call = ui.site.calls["alice"]
    ui.check(page.url.endswith(f"/calls/{call.call_id}"), f"the call's page: {page.url}")
    ui.check(page.inner_text("#consent-status") == "granted", "consent status granted")
    evidence = page.inner_text("section.evidence")
    ui.check("granted" in evidence and PROMPT_SHA256 in evidence, f"evidence: {evidence}")
    ui.check("1 at " in evidence, f"the digit pressed and when: {evidence}")
    ui.check(page.locator("#timeline li").count() >= 3, "a timeline of what happened")
    ui.check(
        page.locator(f"#recordings a[href='/recordings/{call.recording_id}']").count() == 1,
        "the call's recording is listed",
    )


def test_a_recording_plays_and_seeks_with_a_range_request(ui: Ui) -> None:
    page = ui.page()
    ui.log_in(page, "sam")
    call = ui.site.calls["alice"]
    audio = f"/recordings/{call.recording_id}/audio"
    served: list[tuple[int, str, str]] = []  # status, Range asked, Content-Range answered

    def seen(r: Any) -> None:
        if r.url.endswith(audio):
            served.append(
                (r.status, r.request.headers.get("range", ""), r.headers.get("content-range", ""))
            )

    page.on("response", seen)
    paused = pause(ui.site, call.recording_id, call.seconds * 0.3, call.seconds * 0.4)
    ui.goto(page, f"/recordings/{call.recording_id}", "player")
    play(page, 1.0)
    state = player_state(page)
    ui.shots.take(page, "playing")
    ui.check(state["error"] is None and not state["paused"], f"the audio plays: {state}")
    ui.check(
        abs(state["duration"] - call.seconds) < 0.05,
        f"duration {state['duration']} s is the recording's {call.seconds} s",
    )

    drawn = page.locator("#waveform[data-ready='1']")
    drawn.wait_for(state="attached")  # wavesurfer.js decoded the audio and drew it
    ui.check(drawn.count() == 1, "the waveform is drawn over the player")
    # wavesurfer.js draws in a shadow DOM: a region is [part="region <id>"], its label inside
    stretch = page.locator("#waveform [part^='region ']").filter(has_text="paused")
    ui.check(stretch.count() == 1, f"the paused stretch {paused} is shaded on the waveform")
    box, wave = stretch.bounding_box(), page.locator("#waveform").bounding_box()
    ui.check(
        box is not None
        and wave is not None
        and abs((box["x"] - wave["x"]) / wave["width"] - 0.3) < 0.02
        and abs(box["width"] / wave["width"] - 0.1) < 0.02,
        f"the shaded stretch spans 30% to 40% of the waveform: {box} of {wave}",
    )
    ui.shots.take(page, "waveform", doc="player.png")

    middle = call.seconds / 2
    page.evaluate("t => { document.getElementById('player').currentTime = t; }", middle)
    play(page, middle + 1.0)
    ui.shots.take(page, "seeked")
    seeks = [
        (status, asked, answered)
        for status, asked, answered in served
        if status == 206 and asked.startswith("bytes=") and asked[6:].split("-")[0] not in ("", "0")
    ]
    ui.check(seeks, f"a Range request was served after the seek: {served}")
    first = int(seeks[-1][1][6:].split("-")[0])
    ui.check(
        0.4 * call.wav_size < first < 0.6 * call.wav_size,
        f"the seek asked for the middle of {call.wav_size} bytes: {seeks}",
    )
    ui.check(
        seeks[-1][2].startswith(f"bytes {first}-") and seeks[-1][2].endswith(f"/{call.wav_size}"),
        f"Content-Range answers it: {seeks[-1]}",
    )


def test_a_share_link_plays_without_a_session_until_revoked(ui: Ui) -> None:
    sam = ui.page()
    ui.log_in(sam, "sam")
    call = ui.site.calls["bob"]
    ui.goto(sam, f"/recordings/{call.recording_id}", "recording-before-share")
    ui.submit(sam, "#share", "share-created")
    url = sam.input_value("#new-link input")
    ui.check(url.startswith(ui.site.url + "/s/"), f"a share link was shown: {url!r}")

    stranger = ui.page()  # a fresh context: no cookie, no session
    response = ui.goto(stranger, url, "share-opened", doc="shared.png")
    ui.check(response.status == 200, f"the link opens: {response.status}")
    text = stranger.inner_text("main")
    ui.check("shared with you" in text and "sales" in text, f"player page: {text}")
    ui.check("30901820" not in text and "evidence" not in text.lower(), "no number, no evidence")
    play(stranger, 1.0)
    ui.shots.take(stranger, "share-playing")
    ui.check(player_state(stranger)["error"] is None, "the shared audio plays")

    ui.goto(sam, f"/recordings/{call.recording_id}", "recording-with-link")
    ui.submit(sam, "#links button.revoke", "link-revoked")
    ui.check("revoked" in sam.inner_text("#links"), "the recording page shows it revoked")

    response = stranger.reload()
    ui.shots.take(stranger, "share-refused")
    ui.check(response.status == 410, f"the revoked link is refused: {response.status}")
    ui.check("revoked" in stranger.inner_text("#error"), "the page says the link was revoked")
    ui.check(stranger.locator("#player").count() == 0, "no player on the refusal")


def test_a_supervisor_has_no_delete_button_and_the_api_refuses(ui: Ui) -> None:
    rid = ui.site.calls["bob"].recording_id
    dora = ui.page()
    ui.log_in(dora, "dora")
    ui.goto(dora, f"/recordings/{rid}", "dpo-recording")
    ui.check(dora.locator("button#delete").count() == 1, "a DPO sees the delete button")
    # the audit page's check of the whole chain runs in a process the server starts for it
    ui.goto(dora, "/audit", "audit")
    deadline = time.monotonic() + 30
    while "is running" in dora.inner_text("#verify") and time.monotonic() < deadline:
        time.sleep(0.5)
        ui.goto(dora, "/audit", "audit-again")
    verdict = dora.inner_text("#verify")
    ui.check("chain intact" in verdict and "tampered" not in verdict, f"the check: {verdict}")

    sam = ui.page()
    ui.log_in(sam, "sam")
    ui.goto(sam, f"/recordings/{rid}", "supervisor-recording")
    ui.check(sam.locator("#player").count() == 1, "the supervisor sees the player")
    ui.check(sam.locator("button#delete").count() == 0, "no delete button for a supervisor")
    ui.check(sam.locator("button#hold").count() == 0, "no hold button for a supervisor")
    ui.goto(sam, "/dashboard", "dashboard")
    sam.locator("#charts canvas").first.wait_for()
    ui.shots.take(sam, "dashboard-drawn", doc="dashboard.png")
    ui.check("sales" in sam.inner_text("#charts"), "Chart.js drew the sales campaign's chart")
    ui.check("counted at" in sam.inner_text("#totals"), "the dashboard says when it counted")

    api = ui.playwright.request.new_context(
        base_url=ui.site.url,
        extra_http_headers={"Authorization": f"Bearer {ui.site.tokens['sam']}"},
    )
    try:
        seen = api.get(f"/api/v1/recordings/{rid}")
        ui.check(seen.status == 200, f"sam's token reads the recording: {seen.status}")
        refused = api.delete(f"/api/v1/recordings/{rid}", data=json.dumps({"reason": "test"}))
        body = refused.json()
        ui.check(refused.status == 403, f"DELETE as a supervisor: {refused.status} {body}")
        ui.check("supervisor" in body.get("error", ""), f"the refusal names the role: {body}")
        after = api.get(f"/api/v1/recordings/{rid}").json()
        ui.check(after["state"] == "encrypted", f"the recording is still there: {after}")
    finally:
        api.dispose()


def test_an_agent_cannot_open_another_agents_call(ui: Ui) -> None:
    page = ui.page()
    ui.log_in(page, "alice")
    rows = table_rows(page)
    ui.check(len(rows) == 1 and "alice" in rows[0], f"alice lists only her call: {rows}")
    own, other = ui.site.calls["alice"], ui.site.calls["bob"]
    response = ui.goto(page, f"/calls/{own.call_id}", "agent-own-call")
    ui.check(response.status == 200, f"alice opens her own call: {response.status}")
    for path, name in (
        (f"/calls/{other.call_id}", "agent-other-call"),
        (f"/recordings/{other.recording_id}", "agent-other-recording"),
        (f"/recordings/{other.recording_id}/audio", "agent-other-audio"),
    ):
        response = ui.goto(page, path, name)
        ui.check(response.status == 403, f"{path} for alice: {response.status}")
    ui.check("not" in page.inner_text("body"), "the refusal says why")


def test_five_wrong_passwords_lock_the_account(ui: Ui) -> None:
    page = ui.page()
    ui.log_in(page, "lena")
    ui.check(page.url.endswith("/calls"), "lena logs in with her password")
    ui.submit(page, "header form button", "logged-out")
    for attempt in range(1, 6):
        response = ui.log_in(page, "lena", f"wrong password {attempt}")
        ui.check(response.status == 401, f"wrong password {attempt}: {response.status}")
        error = page.inner_text("#error")
        expected = "locked" if attempt == 5 else "wrong name, password or code"
        ui.check(expected in error, f"attempt {attempt} says {error!r}")
    response = ui.log_in(page, "lena")
    ui.check(response.status == 401 and "/login" in page.url, "the right password is refused")
    ui.check("locked" in page.inner_text("#error"), "the page says the account is locked")


def test_enrol_totp_then_log_in_with_a_code(ui: Ui) -> None:
    import pyotp

    page = ui.page()
    ui.log_in(page, "bob")
    ui.submit(page, "header a.who", "account", doc="account.png")
    ui.check(page.inner_text("#totp-state") == "off", "bob has no second factor yet")
    ui.check(page.locator("#totp-qr svg").count() == 1, "a QR code is drawn")
    secret = page.inner_text("#totp-secret")
    ui.check(secret in page.inner_text("#totp-uri"), "the otpauth URI carries the secret")
    page.fill("#totp-enrol input[name=code]", pyotp.TOTP(secret).now())
    page.fill("#totp-enrol input[name=password]", PASSWORD)
    response = ui.submit(page, "#totp-enrol button", "totp-on")
    ui.check(response.status == 200, f"enrolment: {response.status} {page.inner_text('main')}")
    ui.check(page.inner_text("#totp-state") == "on", "the second factor is on")
    ui.submit(page, "header form button", "logged-out")

    response = ui.log_in(page, "bob")
    ui.check(response.status == 401, f"the password alone is refused now: {response.status}")
    # the code that confirmed the enrolment is spent (a code is accepted once); the next is not
    response = ui.log_in(page, "bob", code=next_code(secret))
    ui.check(page.url.endswith("/calls"), f"with the code bob is in: {response.status} {page.url}")
