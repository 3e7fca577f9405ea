"""The edges of the Asterisk adapter against the simulator: stereo, withheld numbers, the
channel's language, a prompt Asterisk cannot play, hostile caller names, AGI hangup modes,
AMI going away, a second pass through the consent IVR, many calls at once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import hangup, press


def test_stereo_records_a_headerless_raw_file_with_its_rate_and_channels(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 2.0)])
        await h.settle()
        (rec,) = h.recordings(h.call_row(call.customer.linkedid).id)
        assert (rec.format, rec.channels, rec.sample_rate, rec.state) == ("raw", 2, 8000, "closed")
        assert rec.spool_path.endswith(".raw")
        size = len(Path(rec.spool_path).read_bytes())  # noqa: ASYNC240
        assert size > 0 and size % 4 == 0
        assert h.sim.exec_log[0][2].endswith(",i(MIXMON_ID)D")

    run(tmp_path, scenario, policies="[policies.sales]\nstereo = true\n")


def test_a_withheld_number_is_not_kept(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound(
            "sales", [press("2"), hangup("talk", 0.5)], pres="prohib_not_screened"
        )
        row = h.call_row(call.customer.linkedid)
        assert (row.number_kind, row.number_key, row.number_enc) == ("withheld", None, None)

    run(tmp_path, scenario)


def test_prompts_play_in_the_channels_language(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 0.5)], language="de_DE")
        prompt_dir = h.app.config.prompt_dir
        assert call.customer.heard_paths == [
            str(prompt_dir / "de" / "consent"),
            str(prompt_dir / "de" / "thanks"),
        ]
        assert h.evidence(h.call_row(call.customer.linkedid).id)[0].language == "de"

    run(tmp_path, scenario)


def test_a_prompt_asterisk_cannot_play_is_told_from_a_hangup(tmp_path: Path) -> None:
    """missing_prompt_and_errors: STREAM FILE answers -1 on a live channel; CHANNEL STATUS
    then answers, where a hung-up channel would give HANGUP or 511."""

    async def scenario(h: Harness) -> None:
        (h.app.config.prompt_dir / "en" / "consent.wav").rename(
            h.app.config.prompt_dir / "en" / "moved.wav"
        )  # the catalog still lists it; Asterisk cannot open it
        call = await h.sim.inbound("sales", [hangup("talk", 0.5)])
        assert call.customer.alive is False
        assert call.gosub_retval == "unavailable"
        row = h.call_row(call.customer.linkedid)
        decision = h.evidence(row.id)[0]
        assert (decision.status, decision.method) == ("unavailable", "prompt_failed")
        assert h.recordings(row.id) == []
        agi = call.customer  # the call went on after the failed prompt
        assert agi.vars["AGISTATUS"] == "SUCCESS"

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    "name",
    ["Eve\nagi_network_script: injected", "Eve\n\nagi_fake: 1", 'Evil "Quote" Back\\slash'],
    ids=["nl1", "nl2", "quotes"],
)
def test_a_hostile_caller_name_changes_nothing(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        caplog.set_level(logging.WARNING, "callconsent.agi")
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 1.0)], name=name)
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        assert (row.campaign, row.consent_status, row.number_kind) == ("sales", "granted", "e164")
        assert h.recordings(row.id)[0].state == "closed"
        if "\n" in name:
            assert "agi_environment_anomaly" in caplog.text

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("sighup", "exit_on_hangup"), [(False, False), (True, True)], ids=["no_sighup", "exit"]
)
def test_hangup_modes_of_the_agi_application(
    tmp_path: Path, sighup: bool, exit_on_hangup: bool
) -> None:
    async def scenario(h: Harness) -> None:
        h.sim.agi_sighup, h.sim.agi_exit_on_hangup = sighup, exit_on_hangup
        call = await h.sim.inbound("sales", [press("1"), hangup("thanks", 1.0)])
        await h.settle()
        row = h.call_row(call.customer.linkedid)
        assert row.consent_status == "granted" and row.ended_at is not None
        assert h.recordings(row.id)[0].state == "closed"

    run(tmp_path, scenario)


def test_a_hangup_missed_while_ami_was_away_is_found_after_the_reconnect(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ami = h.service.adapter.ami
        assert ami is not None
        task = asyncio.create_task(h.sim.inbound("sales", [press("1"), hangup("talk", 60.0)]))
        await h.sim.wait_until(h.sim.consent_asked)
        cust = h.sim.customers()[-1]
        await asyncio.sleep(0.05)
        h.sim.ami.kick_all()
        await h.sim.wait_until(lambda: not ami.connected)
        h.sim.hangup(cust)  # its Hangup event reaches nobody
        await task
        # bounded waits for progress, not timing goals: generous for a loaded 2-core machine
        await h.sim.wait_until(lambda: ami.logins == 2, wait_s=20)
        row_id = h.call_row(cust.linkedid).id
        await h.sim.wait_until(
            lambda: [r.state for r in h.recordings(row_id)] == ["closed"], wait_s=20
        )
        await h.sim.wait_until(lambda: h.call_row(cust.linkedid).ended_at is not None, wait_s=20)

    run(tmp_path, scenario)


def test_a_second_pass_through_the_consent_ivr_carries_the_decision(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        task = asyncio.create_task(h.sim.inbound("sales", [press("1"), hangup("talk", 30.0)]))
        await h.sim.wait_until(h.sim.consent_asked)
        cust = h.sim.customers()[-1]
        first = dict(cust.vars)
        cust.vars.pop("CONSENT_STATUS")
        retval = await h.sim.dialplan.gosub(cust, "callconsent-inbound", ("sales",))
        assert retval == "granted"
        assert cust.heard == ["consent", "thanks"]  # not asked again
        assert cust.vars["CONSENT_ID"] == first["CONSENT_ID"]
        assert len(h.recordings(h.call_row(cust.linkedid).id)) == 1
        h.sim.hangup(cust)
        await task

    run(tmp_path, scenario)


def test_many_calls_at_once_keep_their_own_decisions(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        scripts = [[press(str(1 + i % 2)), hangup("talk", 1.0)] for i in range(40)]
        calls = await asyncio.gather(*(h.sim.inbound("sales", s) for s in scripts))
        await h.settle()
        for i, call in enumerate(calls):
            row = h.call_row(call.customer.linkedid)
            expected = "granted" if i % 2 == 0 else "declined"
            assert call.gosub_retval == row.consent_status == expected
            recs = h.recordings(row.id)
            assert [r.id for r in recs] == (
                [call.customer.vars["CONSENT_RECORDING_ID"]] if recs else []
            )
            assert all(r.state == "closed" for r in recs)
        assert len(h.sink.closed) == 20

    run(tmp_path, scenario)


def test_a_recording_asterisk_could_not_write_is_discarded_not_kept_open(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.sim.unwritable_spool = True
        call = await h.sim.inbound("sales", [press("1"), hangup("talk", 1.0)])
        await h.settle()
        (rec,) = h.recordings(h.call_row(call.customer.linkedid).id)
        assert (rec.state, rec.discard_reason) == ("discarded", "pbx_wrote_no_file")

    run(tmp_path, scenario)
