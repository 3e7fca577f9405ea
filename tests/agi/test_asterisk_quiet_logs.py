"""Ordinary calls log no error and no traceback on the simulated Asterisk (issue 14, point 2):
a hangup during the prompt, after a decline, after the dialogue or while recording is how
calls end, not a crash. The same check runs against the real Asterisk in
``tests/realpbx/test_asterisk_realpbx.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import hangup, press
from error_lines import no_error_lines

FLOWS = {
    "accept_then_hangup_while_recording": ([press("1", "consent", 1.0)], "talk", "granted"),
    "accept_then_hangup_during_thanks": ([press("1", "consent", 1.0)], "thanks", "granted"),
    "decline_then_hangup": ([press("2", "consent", 1.0)], "talk", "declined"),
    "decline_then_hangup_during_declined_prompt": (
        [press("2", "consent", 1.0)],
        "declined",
        "declined",
    ),
    "silence_then_hangup": ([], "talk", "no_input"),
    "hangup_during_the_prompt": ([], "consent", "no_input"),
}


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_an_ordinary_call_logs_no_error_and_no_traceback(tmp_path: Path, flow: str) -> None:
    steps, where, status = FLOWS[flow]

    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [*steps, hangup(where, 0.5)])
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        assert row.consent_status == status and row.ended_at is not None
        assert all(r.state == "closed" for r in h.recordings(row.id))
        assert h.app.calls.find("asterisk", call.customer.linkedid) is None

    with no_error_lines():
        run(tmp_path, scenario)
