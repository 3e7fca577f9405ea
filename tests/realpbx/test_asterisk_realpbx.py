"""The simulator's flows against a real Asterisk (``CALLCONSENT_ASTERISK``): our rendered
dialplan, features and AMI user loaded into it, real calls over Local channels originated over
AMI, our FastAGI server and our write=call AMI user doing the work."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from asterisk_real import Lab
from asterisk_real_harness import Real, go, lab_or_skip, size
from error_lines import no_error_lines

from agi.closure import header_final

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_or_skip()


def test_real_accept(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("accept", talk=2.0)
        assert (started["Status"], started["Agistatus"], started["Retval"]) == (
            "granted",
            "SUCCESS",
            "granted",
        )
        call = r.last_call()
        assert call.consent_status == "granted" and call.ended_at is not None
        (decision,) = r.evidence(call.id)
        assert [d["digit"] for d in decision.digits] == ["1"]
        (rec,) = r.recordings(call.id)
        assert rec.id == started["Rec"] and rec.pbx_ref == started["Mixmon"]
        assert rec.state == "closed"
        assert header_final(Path(rec.spool_path)) and size(rec.spool_path) > 44
        assert r.sink.closed == [rec.id]

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        go(lab, tmp_path, scenario)


def test_real_decline(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("decline")
        assert started["Status"] == "declined"
        call = r.last_call()
        assert r.recordings(call.id) == []
        assert list(r.app.spool.path.iterdir()) == []

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        go(lab, tmp_path, scenario)


def test_real_silence(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        started, _ = await r.call("silence", talk=14.0)
        assert started["Status"] == "no_input"
        call = r.last_call()
        (decision,) = r.evidence(call.id)
        assert decision.attempts == 2 and r.recordings(call.id) == []

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        go(lab, tmp_path, scenario)


def test_real_hangup_during_the_prompt(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.call("early")
        call = r.last_call()
        (decision,) = r.evidence(call.id)
        assert (decision.status, decision.method) == ("no_input", "hangup")
        assert call.ended_at is not None and r.recordings(call.id) == []

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        go(lab, tmp_path, scenario)


def test_real_hangup_while_recording(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.call("talkhang")
        call = r.last_call()
        (rec,) = r.recordings(call.id)
        assert rec.state == "closed" and header_final(Path(rec.spool_path))
        assert size(rec.spool_path) > 8000  # the caller's speech was recorded

    with no_error_lines():  # ordinary hangups are no crash (issue 14, point 2)
        go(lab, tmp_path, scenario)


def test_real_service_down(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        await r.service.server.stop()
        started, _ = await r.call("accept", talk=0.5)
        assert (started["Agistatus"], started["Status"], started["Retval"]) == (
            "FAILURE",
            "unavailable",
            "unavailable",
        )

    go(lab, tmp_path, scenario)


def test_real_agent_feature_codes(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        _, end = await r.call("talkloop", agent="agent-feat")
        call = r.last_call()
        recs = r.recordings(call.id)
        assert [x.state for x in recs] == ["discarded", "discarded"]
        assert {x.discard_reason for x in recs} == {"agent_discard"}
        changes = [e for e in r.evidence(call.id) if e.kind == "change"]
        assert [(e.status, e.method) for e in changes] == [("declined", "agent_discard")]
        assert end["Status"] == "declined"  # set on the customer leg by AMI Setvar
        assert "tccstart" not in end.get("Features", "")  # the codes never reached the customer leg
        assert sorted(r.sink.discarded) == sorted(x.id for x in recs)

    go(lab, tmp_path, scenario)


def test_the_spool_modes_are_what_the_daemon_demands(lab: Lab, tmp_path: Path) -> None:
    async def scenario(r: Real) -> None:
        mode = stat.S_IMODE(r.app.spool.path.stat().st_mode)
        assert mode == 0o2770

    go(lab, tmp_path, scenario)
