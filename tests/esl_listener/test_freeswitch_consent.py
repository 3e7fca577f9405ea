"""The FreeSWITCH adapter end to end against the simulated FreeSWITCH, over real sockets: the
consent outcomes (the same as on Asterisk), the evidence and recordings in the store, and the
FreeSWITCH-only behaviours (exports, linger, RECORD_STOP, agent feature codes, listen-in)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from freeswitch_rig import call, decision, open_app, rows, run, until, valid_wav
from freeswitch_sim import Caller, FakeFreeSwitch

from callconsent.app import App
from callconsent.control import ControlServer
from esl_listener.service import FreeswitchConfigError, FreeswitchService, Settings
from recorder.live.callbook import CallBook
from recorder.store.models import AuditEntry, Call, Recording

CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-test"

[policies.default]
digit_timeout_ms = 3000

[policies.sales]
monitoring_allowed = true

[policies.stereo]
stereo = true

[policies.queue]
record_from = "agent_answer"

[policies.outbound]
mode = "on_demand"

[policies.notice]
mode = "always"
legal_basis = "legitimate_interest"
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = open_app(tmp_path, CONFIG, ("en", "de"))
    yield application
    application.close()


# -- the consent outcomes ------------------------------------------------------------------


def test_accept_records_the_customer_leg_and_hands_the_call_back(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "sales", Caller(["1"]))
        sim = leg.sim  # type: ignore[attr-defined]
        assert sim.exited and leg.up  # exit, never a hangup: the dialplan goes on
        assert sim.commands[:3] == [
            "myevents",
            "event plain RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP",
            "linger",
        ]
        apps = [a for a, _ in sim.executed]
        assert "hangup" not in apps
        assert apps[:3] == ["set", "answer", "play_and_get_digits"]
        (rec,) = rows(app, Recording)
        path = app.spool.path_for(rec.id)
        # on the session's own socket: an api runs at once, an execute waits for a frame
        assert (
            f"api uuid_record {leg.uuid} start {path} 0 "
            "{RECORD_STEREO=false,RECORD_PRE_BUFFER_FRAMES=0}"
        ) in sim.commands
        assert leg.exports >= {"consent_status", "consent_id", "consent_recording_id"}
        assert leg.variables["consent_status"] == "granted"
        assert leg.variables["consent_recording_id"] == rec.id
        assert leg.variables["eavesdrop_group"] == "consented"  # sales allows listen-in
        assert rec.state == "recording" and rec.channels == 1
        d = decision(app)
        assert (d.status, d.method, d.pbx_call_id) == ("granted", "prompt", leg.call_uuid)
        assert d.prompt_sha256 == app.prompts.get("consent", "en").sha256
        assert d.prompts[0]["outcome"] == "interrupted"  # the key barged into the question
        # the file is not valid until FreeSWITCH closes it
        assert path.read_bytes()[40:44] == b"\0\0\0\0"
        agent = await fs.bridge(leg)
        assert agent.variables["consent_status"] == "granted"  # exported, so the agent leg sees it
        fs.talk(leg, 1.0)
        await fs.hangup_leg(agent)
        await fs.hangup_leg(leg)
        await until(lambda: rows(app, Recording)[0].state == "closed", "RECORD_STOP handled")
        await until(lambda: len(app.calls) == 0, "call forgotten after hangup")
        assert valid_wav(path) == (1, 8000)
        (c,) = rows(app, Call)
        assert c.ended_at is not None and c.consent_status == "granted"
        actions = [a.action for a in rows(app, AuditEntry)]
        assert actions == [
            "call.opened",
            "consent.decision",
            "recording.started",
            "recording.closed",
        ]

    run(app, scenario)


def test_accept_after_the_question_finished(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["1"], barge=False))
        d = decision(app)
        assert d.status == "granted"
        assert d.prompts[0]["outcome"] == "finished"  # PLAYBACK_STOP came before the DTMF
        assert len(rows(app, Recording)) == 1 and leg.sim.exited  # type: ignore[attr-defined]

    run(app, scenario)


def test_decline_is_not_recorded_and_the_call_goes_on(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "sales", Caller(["2"]))
        assert rows(app, Recording) == []
        assert decision(app).status == "declined"
        assert leg.variables["consent_status"] == "declined" and "consent_status" in leg.exports
        assert "eavesdrop_group" not in leg.variables
        assert not list(app.spool.path.iterdir())
        sim = leg.sim  # type: ignore[attr-defined]
        played = [arg for app_, arg in sim.executed if app_ == "playback"]
        assert played == [str(app.prompts.get("declined", "en").path)]
        assert sim.exited and leg.up

    run(app, scenario)


def test_silence_is_not_consent(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller([None, None]))
        d = decision(app)
        assert (d.status, d.attempts) == ("no_input", 2)
        asked = [a for a, _ in leg.sim.executed if a == "play_and_get_digits"]  # type: ignore[attr-defined]
        assert len(asked) == 2 and rows(app, Recording) == []
        assert leg.variables["consent_status"] == "no_input" and leg.up

    run(app, scenario)


def test_an_invalid_key_uses_an_attempt_and_is_kept_as_evidence(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        await call(fs, svc, "default", Caller(["7", "1"]))
        d = decision(app)
        assert d.status == "granted" and [x["digit"] for x in d.digits] == ["7", "1"]
        assert [x["valid"] for x in d.digits] == [False, True]

    run(app, scenario)


def test_hangup_during_the_question(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["hangup"]))
        d = decision(app)
        assert (d.status, d.method) == ("no_input", "hangup")
        sim = leg.sim  # type: ignore[attr-defined]
        # nothing was executed after the hangup: +OK to sendmsg is no proof of life
        assert [a for a, _ in sim.executed][-1] == "play_and_get_digits"
        await until(lambda: rows(app, Call)[0].ended_at is not None, "call ended")
        await until(lambda: len(app.calls) == 0, "call forgotten")
        assert rows(app, Recording) == []

    run(app, scenario)


def test_hangup_while_recording_closes_the_file(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["1", "hangup"]))  # hangs up during thanks
        (rec,) = rows(app, Recording)
        await until(lambda: rows(app, Recording)[0].state == "closed", "RECORD_STOP")
        await until(lambda: len(app.calls) == 0, "forgotten")
        assert valid_wav(app.spool.path_for(rec.id))[0] == 1
        assert decision(app).status == "granted" and not leg.up

    run(app, scenario)


def test_service_down_leaves_the_call_to_the_dialplan_fallback(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        port = svc.outbound.port
        await svc.outbound.stop()
        leg = fs.new_leg("consent", "4915112345", socket_path="consent/sales")
        sim = await fs.call(port, leg, Caller(["1"]))
        assert sim.refused and leg.up  # FreeSWITCH: "Connection refused", next action runs
        assert rows(app, Call) == [] and "consent_status" not in leg.variables

    run(app, scenario)


# -- recordings, legs, languages -------------------------------------------------------------


def test_stereo_policy(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "stereo", Caller(["1"]))
        (rec,) = rows(app, Recording)
        assert rec.channels == 2
        fs.talk(leg, 0.5)
        await fs.hangup_leg(leg)
        await until(lambda: rows(app, Recording)[0].state == "closed", "closed")
        assert valid_wav(app.spool.path_for(rec.id)) == (2, 4000)

    run(app, scenario)


def test_record_from_agent_answer_starts_on_the_bridge(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "queue", Caller(["1"]))
        assert rows(app, Recording) == [] and decision(app).status == "granted"
        rid = leg.variables["consent_recording_id"]
        await fs.bridge(leg)
        await until(lambda: bool(leg.recordings), "recording started on bridge")
        assert rows(app, Recording)[0].id == rid
        assert any(c.startswith(f"uuid_record {leg.uuid} start ") for c in fs.api_log)
        assert leg.recordings  # FreeSWITCH records the customer leg

    run(app, scenario)


def test_channel_language_and_withheld_number(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = fs.new_leg("consent", "anonymous", socket_path="consent/default", hide=True)
        leg.variables["default_language"] = "de"
        await fs.call(svc.outbound.port, leg, Caller(["2"]))
        (c,) = rows(app, Call)
        assert c.number_key is None and c.number_enc is None
        assert decision(app).language == "de"
        de = str(app.prompts.get("consent", "de").path)
        assert any(de in arg for a, arg in fs.sendmsg_log if a == "play_and_get_digits")

    run(app, scenario)


def test_notice_with_an_objection_key(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "notice", Caller(["2"]))
        assert decision(app).status == "declined" and rows(app, Recording) == []
        assert ("set", "playback_terminators=2") in leg.sim.executed  # type: ignore[attr-defined]

    run(app, scenario)


def test_esl_password_is_required() -> None:
    with pytest.raises(FreeswitchConfigError, match="esl_password"):
        FreeswitchService(None, None, Settings())  # type: ignore[arg-type]


# -- agents: the CLI, listen-in (the keys: test_freeswitch_keys.py) ------------------------------


def test_cli_record_commands_reach_the_call_through_inbound_esl(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["1"]))
        control = ControlServer(app.config.data_dir / "control.sock", app.calls)
        req = {"op": "record", "verb": "pause", "call": leg.call_uuid, "pbx": "freeswitch"}
        reply = await control.handle(req, "uid 0 (root)")
        assert reply["ok"] and reply["done"] == ["PauseRecording"], reply
        (rec,) = rows(app, Recording)
        assert f"uuid_record {leg.uuid} mask {app.spool.path_for(rec.id)}" in fs.api_log
        reply = await control.handle(req | {"verb": "stop"}, "uid 0 (root)")
        assert reply["ok"]
        await until(lambda: rows(app, Recording)[0].state == "closed", "RECORD_STOP")
        reply = await control.handle(req | {"verb": "discard"}, "uid 0 (root)")
        assert reply["ok"] and rows(app, Recording)[0].state == "discarded"
        reply = await control.handle(req | {"verb": "start"}, "uid 0 (root)")
        assert not reply["ok"] and "declined" in reply["error"]

    run(app, scenario)


def test_listen_in_follows_consent(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "sales", Caller(["1"]))
        assert leg.variables["eavesdrop_group"] == "consented"
        agent = await fs.bridge(leg)
        supervisor = fs.new_leg("callconsent_listen", "2001")
        fs.listen(supervisor, leg.uuid)
        fs.press(agent, "*49")  # consent gone: the group goes, listeners are cut
        await until(lambda: not supervisor.up, "listener cut off")
        assert f"uuid_setvar {leg.uuid} eavesdrop_group" in fs.api_log
        assert "eavesdrop_group" not in leg.variables
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")

    run(app, scenario)


def test_inbound_connection_comes_back_and_events_still_count(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["1"]))
        await fs.drop_inbound()
        await until(lambda: svc.inbound.connections == 2, "reconnected")
        await until(lambda: fs.inbound_clients == 1, "subscribed again")
        await fs.hangup_leg(leg)
        await until(
            lambda: rows(app, Recording)[0].state == "closed", "RECORD_STOP after reconnect"
        )

    run(app, scenario)


def test_restricted_esl_user(app: App) -> None:
    """userauth with esl-allowed-events lacking CHANNEL_BRIDGE: the rest still works, and the
    missing permission is reported (the captured -ERR permission denied)."""
    allowed = {"RECORD_START", "RECORD_STOP", "CHANNEL_HANGUP_COMPLETE", "CUSTOM"}
    fs = FakeFreeSwitch(users={"cc@pbx": ("pw", allowed, {"uuid_record", "uuid_setvar"})})

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        assert svc.inbound.refused_subscriptions == ["CHANNEL_BRIDGE"]
        leg = await call(fs, svc, "default", Caller(["1"]))
        await fs.hangup_leg(leg)
        await until(lambda: rows(app, Recording)[0].state == "closed", "closed")

    run(app, scenario, fs, esl_user="cc@pbx", esl_password="pw")


def test_wrong_esl_password_keeps_retrying_without_crashing(app: App) -> None:
    async def main() -> None:
        fs = FakeFreeSwitch()
        await fs.start()
        svc = FreeswitchService(
            app.calls, app.spool, Settings(outbound_port=0, esl_port=fs.port, esl_password="x")
        )
        svc.inbound.backoff = (0.01, 0.02)
        await svc.start()
        await asyncio.sleep(0.1)
        assert not svc.inbound.connected.is_set()
        with pytest.raises(Exception, match="no ESL connection"):
            svc.inbound.wait_connected_s = 0.05
            await svc.inbound.api("status")
        await svc.stop()
        await fs.stop()

    asyncio.run(main())


def test_a_call_that_ended_while_the_daemon_was_away_is_ended_after_reconnecting(
    app: App,
) -> None:
    """No CHANNEL_HANGUP_COMPLETE nor RECORD_STOP reach a client that is away; the check after
    the reconnection finds the leg gone and ends the call, so the finalizer adopts its file."""

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "default", Caller(["1"]))
        await fs.drop_inbound()
        await until(lambda: not svc.inbound.connected.is_set(), "disconnected")
        await fs.hangup_leg(leg)
        assert rows(app, Call)[0].ended_at is None
        await until(lambda: svc.inbound.connections == 2, "reconnected")
        await until(lambda: rows(app, Call)[0].ended_at is not None, "ended")
        assert f"uuid_exists {leg.uuid}" in fs.api_log
        assert rows(app, Recording)[0].state == "recording"  # the finalizer adopts it

    run(app, scenario)


@pytest.mark.parametrize("hangup_first", [False, True], ids=["hangs-up-later", "hung-up-meanwhile"])
def test_a_call_from_before_a_daemon_restart_is_ended_in_the_store(
    app: App, hangup_first: bool
) -> None:
    """A restarted daemon holds nothing of the calls in progress; its first login sweeps the
    store's open calls (recorder.live.orphans): ended at once if the leg is gone, else when its
    CHANNEL_HANGUP_COMPLETE comes. Open for ever, the recording's plaintext would stay."""

    async def scenario(app: App, fs: FakeFreeSwitch, old: FreeswitchService) -> None:
        leg = await call(fs, svc=old, campaign="default", caller=Caller(["1"]))
        settings = old.settings
        await old.stop()  # the daemon goes down with the call still up
        if hangup_first:
            await fs.hangup_leg(leg)  # its events reach nobody
        book = CallBook(app.ledger, app.calls.policies, app.prompts)  # a fresh memory
        new = FreeswitchService(book, app.spool, settings)
        await new.start()
        try:
            if not hangup_first:
                await until(lambda: new.registry.orphans.watches(leg.uuid), "watched")
                assert rows(app, Call)[0].ended_at is None
                await fs.hangup_leg(leg)
            await until(lambda: rows(app, Call)[0].ended_at is not None, "ended")
            assert f"uuid_exists {leg.uuid}" in fs.api_log
            # its file is final: handed on now (its RECORD_STOP reached nobody if it hung up
            # while the daemon was down), not at the finalizer's next reconcile pass
            await until(lambda: rows(app, Recording)[0].state == "closed", "handed on")
        finally:
            await new.stop()

    run(app, scenario)
