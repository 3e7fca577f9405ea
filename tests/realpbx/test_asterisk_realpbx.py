"""The simulator's flows against a real Asterisk (``CALLCONSENT_ASTERISK``): our rendered
dialplan, features and AMI user loaded into it, real calls over Local channels originated over
AMI, our FastAGI server and our write=call AMI user doing the work."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asterisk_real import Lab
from asterisk_real_harness import Real, fields, go, lab_or_skip, size
from error_lines import no_error_lines
from panoramisk.message import Message
from recstore import make_rig

from agi.ami import AmiClient
from agi.closure import header_final
from recorder.finalize.finalizer import FinalizerSettings

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


def test_real_asterisk_sends_our_login_call_events_only(lab: Lab, tmp_path: Path) -> None:
    """Our AMI login asks for ``call`` events (``Events: call``): logged in as the lab's
    ``read = all`` user without event filters, a real consent call brings it the hangups, and
    none of the AGI, dialplan and DTMF events the observer (``Events: on``) sees."""
    got: list[tuple[str, str]] = []

    async def scenario(r: Real) -> None:
        t = lab.target

        def note(m: Message) -> None:
            got.append((str(m.get("Event")), str(m.get("Privilege"))))

        ours = AmiClient(t.host, t.port, t.user, t.secret, name="ours", on_event=note)
        assert await ours.start()
        try:
            started, _ = await r.call("accept", talk=1.0)
        finally:
            await ours.stop()
        assert started["Status"] == "granted"
        seen = {str(m.get("Event")) for m in r.events}
        assert {"AGIExecStart", "VarSet", "Newexten", "Hangup"} <= seen  # what Asterisk sent
        assert ("Hangup", "call,all") in got
        assert [e for e in got if not e[1].startswith("call,")] == []

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


def test_real_orphaned_recording_is_encrypted_once_its_call_ends(lab: Lab, tmp_path: Path) -> None:
    """The daemon restarts during a recorded call (it forgets the call; its AMI login sweeps
    the store's open calls); the caller hangs up: the recording is encrypted within seconds,
    not at the finalizer's next reconcile pass (issue 14, point 3; here it never comes)."""

    async def scenario(r: Real) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=3600, settle_s=3600, not_final_retries=(0.02, 0.1, 0.5)
        )
        rig = make_rig(r.app, settings=settings)  # the real finalizer, as the ledger's sink
        await rig.finalizer.start()
        try:
            token = await r.inbound("accept", talk=30.0, HOLD="30")
            started = fields(await r.event("CCTest", token))
            assert started["Status"] == "granted"
            uid, linkedid = started["Uniqueid"], started["Linkedid"]
            adapter = r.service.adapter
            r.app.calls.forget("asterisk", linkedid)  # the daemon restarted: memory gone
            adapter.registry.drop(linkedid)
            adapter.on_ami_ready()  # the restarted daemon's login
            await r.until(lambda: adapter.orphans.watches(uid), what="the orphan watched")
            await r.hangup(started["Channel"])
            await r.finished(token)
            ended = time.monotonic()
            call_id = r.call_of(linkedid).id
            await r.until(
                lambda: [x.state for x in r.recordings(call_id)] == ["encrypted"],
                wait_s=3,
                what="the recording encrypted at once",
            )
            print(f"orphan_hangup_to_encrypted_s={time.monotonic() - ended:.3f}")
            (rec,) = r.recordings(call_id)
            assert not await asyncio.to_thread(os.path.exists, rec.spool_path)  # no plaintext
        finally:
            await rig.finalizer.stop()

    go(lab, tmp_path, scenario)
