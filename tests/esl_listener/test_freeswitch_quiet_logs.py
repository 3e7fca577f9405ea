"""Ordinary calls log no error and no traceback on the simulated FreeSWITCH (issue 14, point
2): a hangup during the prompt, after a decline, after the dialogue or while recording is how
calls end, not a crash. The same check runs against the real FreeSWITCH in
``tests/realpbx/test_freeswitch_realpbx.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from error_lines import no_error_lines
from freeswitch_rig import call, decision, open_app, rows, run, until
from freeswitch_sim import Caller, FakeFreeSwitch

from callconsent.app import App
from esl_listener.service import FreeswitchService
from recorder.store.models import Call, Recording

CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-test"

[policies.default]
digit_timeout_ms = 3000
"""

# (answers at the consent question, hang up once the dialogue handed the call back?, status)
FLOWS = {
    "accept_then_hangup_while_recording": (["1"], True, "granted"),
    "accept_then_hangup_during_thanks": (["1", "hangup"], False, "granted"),
    "decline_then_hangup": (["2"], True, "declined"),
    "decline_then_hangup_during_declined_prompt": (["2", "hangup"], False, "declined"),
    "silence_then_hangup": ([None, None], True, "no_input"),
    "hangup_during_the_prompt": (["hangup"], False, "no_input"),
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = open_app(tmp_path, CONFIG, ("en",))
    yield application
    application.close()


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_an_ordinary_call_logs_no_error_and_no_traceback(app: App, flow: str) -> None:
    answers, hang_up_after, status = FLOWS[flow]

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(answers))
        if hang_up_after:
            assert leg.up
            await fs.hangup_leg(leg)
        assert not leg.up
        await until(lambda: rows(app, Call)[0].ended_at is not None, "call ended")
        await until(lambda: len(app.calls) == 0, "call forgotten")
        assert decision(app).status == status
        assert all(r.state == "closed" for r in rows(app, Recording))

    with no_error_lines():
        run(app, scenario)
