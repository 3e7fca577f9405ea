"""The recording starts right after the caller's key on FreeSWITCH (issue 14, point 1).

Each ``execute`` over the outbound socket waits for the channel's next media frame (20 ms,
captured; the simulator models it). Every application we run between the accept key and
``record_session`` costs the caller that much of their first sentence, so the recording is
started before any application runs after the key, with ``api uuid_record`` on the session's
own socket (an ``api`` runs at once): the evidence is stored and the recording registered
before it (the call book's order), the variables come after it. The wall-clock figure on the
real FreeSWITCH (≤ 50 ms over 20 calls) is measured by ``tests/realpbx``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from freeswitch_rig import call, open_app, rows, run
from freeswitch_sim import Caller, FakeFreeSwitch

from callconsent.app import App
from esl_listener.service import FreeswitchService
from recorder.store.models import AuditEntry, Recording

CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-test"

[policies.default]
digit_timeout_ms = 3000

[policies.sales]
monitoring_allowed = true
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = open_app(tmp_path, CONFIG, ("en",))
    yield application
    application.close()


@pytest.mark.parametrize("campaign", ["default", "sales"])
@pytest.mark.parametrize("barge", [True, False])
def test_the_recording_starts_before_any_application_after_the_accept_key(
    app: App, campaign: str, barge: bool
) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, campaign, Caller(["1"], barge=barge))
        executes, _seconds = fs.digit_to_record(leg)
        # no media frame waited for (before: 3 exports and record_session, 80 ms)
        assert executes * fs.frame_s <= 0.050 and executes == 0
        sim = leg.sim  # type: ignore[attr-defined]
        apps = [a for a, _ in sim.executed]
        after = apps[apps.index("play_and_get_digits") + 1 :]
        assert "record_session" not in after
        assert after.count("export") == 3  # the variables still reach the agent's leg
        start = f"api uuid_record {leg.uuid} start "
        at = next(i for i, line in enumerate(sim.commands) if line.startswith(start))
        applications_before = sim.commands[:at].count("sendmsg")
        assert apps[applications_before - 1] == "play_and_get_digits"  # right after the key
        assert leg.variables["consent_recording_id"] == rows(app, Recording)[0].id
        with app.db.read() as s:
            actions = [a.action for a in s.query(AuditEntry).order_by(AuditEntry.seq)]
        assert actions[:3] == ["call.opened", "consent.decision", "recording.started"]

    run(app, scenario)
