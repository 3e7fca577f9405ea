"""Keys pressed during a FreeSWITCH call, against the simulated FreeSWITCH running the shipped
``callconsent.xml``: the agents' codes (``*41 *42 *43 *49``, as on Asterisk, bound with
``bind_digit_action`` on the agent's leg only) and the caller's withdraw key (bound by the
consent session on the customer's leg only, once they consented)."""

from __future__ import annotations

import asyncio
import uuid
import wave
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freeswitch_rig import call, decision, open_app, rows, run, until
from freeswitch_sim import Caller, FakeFreeSwitch

from callconsent import config as config_mod
from callconsent.app import App
from callconsent.dialplan_render_freeswitch import render
from esl_listener.connection import ApiReply
from esl_listener.marks import DbMarks
from esl_listener.service import FreeswitchService
from recorder.live.callbook import CallBook
from recorder.store.models import Call, ConsentRecord, Recording

CONFIG = """
[daemon]
data_dir = "data"
node = "pbx-keys"

[policies.default]
digit_timeout_ms = 3000

[policies.outbound]
mode = "on_demand"

[policies.withdraw]
withdraw_digit = "9"
monitoring_allowed = true

[policies.withdraw_keep]
withdraw_digit = "#"
on_withdrawal = "stop"
"""
BIND = "callconsent_withdraw,{},exec[H]:execute_extension,callconsent_withdraw XML callconsent"
TONE = "tone_stream://L=2;%(150,100,400)"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = open_app(tmp_path, CONFIG, ("en",))
    yield application
    application.close()


def changes(app: App) -> list[str]:
    return [r.status for r in rows(app, ConsentRecord) if r.kind == "change"]


# -- the agents' codes -------------------------------------------------------------------------


def test_agent_codes_start_mask_stop_discard(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "outbound", Caller([]))  # on_demand: nothing asked, nothing kept
        assert decision(app).status == "not_required" and rows(app, Recording) == []
        agent = await fs.bridge(leg, callconsent_agent="7001")
        assert sorted(agent.keys.bindings) == ["*41", "*42", "*43", "*49"]
        assert leg.keys.bindings == {}  # nothing on the customer's leg
        fs.press(agent, "*41")
        await until(lambda: bool(leg.recordings), "agent start reached FreeSWITCH")
        (rec,) = rows(app, Recording)
        path = app.spool.path_for(rec.id)
        vars_ = "{RECORD_STEREO=false,RECORD_PRE_BUFFER_FRAMES=0}"
        assert f"uuid_record {leg.uuid} start {path} 0 {vars_}" in fs.api_log
        fs.talk(leg, 0.5)
        fs.press(agent, "*42")  # card data
        await until(lambda: f"uuid_record {leg.uuid} mask {path}" in fs.api_log, "masked")
        fs.talk(leg, 0.5)
        fs.press(agent, "*42")  # again: unmask
        await until(lambda: f"uuid_record {leg.uuid} unmask {path}" in fs.api_log, "unmasked")
        fs.talk(leg, 0.5)
        fs.press(agent, "*43")
        await until(lambda: rows(app, Recording)[0].state == "closed", "stopped and closed")
        with wave.open(str(path)) as w:
            frames = w.readframes(w.getnframes())
        assert len(frames) == 2 * 12000
        assert set(frames[8000:16000]) == {0}  # the masked half second is digital silence
        assert set(frames[:8000]) != {0} and set(frames[16000:]) != {0}
        live = app.calls.find("freeswitch", leg.call_uuid)
        assert live is not None and live.status.value == "granted"  # agent attested (on_demand)
        attested = next(r for r in rows(app, ConsentRecord) if r.kind == "change")
        assert attested.actor == "7001"  # ${callconsent_agent} of the agent's leg
        fs.press(agent, "*49")  # the customer said no
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
        assert leg.variables["consent_status"] == "declined"
        fs.press(agent, "*41")  # refused after a decline: a tone to the agent
        await until(lambda: f"uuid_broadcast {agent.uuid} {TONE} aleg" in fs.api_log, "tone")
        assert len(rows(app, Recording)) == 1 and changes(app) == ["granted", "declined"]
        assert leg.keys.passed == ""  # no code reached the customer

    run(app, scenario)


def test_the_customer_pressing_agent_codes_triggers_nothing(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "outbound", Caller([]))
        agent = await fs.bridge(leg)
        fs.press(leg, "*41")  # no binding on the customer's leg: the agent just hears it
        fs.press(agent, "*5")  # no code: the customer hears it (after *, nothing matches *5)
        fs.press(agent, "*4")  # only a prefix: let through at the digit timeout
        fs.feature_code(leg, "start")  # a misconfigured dialplan firing the event anyway
        fs.feature_code(agent, "bogus")
        fs.press(agent, "*43")  # marker: stop with nothing running is refused with a tone
        await until(lambda: any("uuid_broadcast" in c for c in fs.api_log), "stop refused")
        assert agent.keys.passed == "*41" and leg.keys.passed == "*5*4"
        assert rows(app, Recording) == []
        assert not any(c.startswith("uuid_record") for c in fs.api_log)

    run(app, scenario)


def test_codes_come_from_the_config(app: App, tmp_path: Path) -> None:
    cfg = tmp_path / "codes.toml"
    cfg.write_text(CONFIG + '\n[freeswitch]\nfeature_start = "#71"\n')
    (xml,) = [
        p for p in render(config_mod.load(cfg), tmp_path / "out") if p.name == "callconsent.xml"
    ]
    fs = FakeFreeSwitch(dialplan=xml.read_text())

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "outbound", Caller([]))
        agent = await fs.bridge(leg)
        assert sorted(agent.keys.bindings) == ["#71", "*42", "*43", "*49"]
        fs.press(agent, "*41")  # no longer a code: the customer hears it
        fs.press(agent, "#71")
        await until(lambda: bool(leg.recordings), "started with the configured code")
        assert leg.keys.passed == "*41"

    run(app, scenario, fs)


def test_codes_on_an_agents_outbound_call(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        agent = fs.new_leg("callconsent_out_outbound", "7001", socket_path="outbound/outbound")
        agent.variables |= {"callconsent_agent": "7001", "callconsent_number": "4915112345"}
        sim = await fs.call(svc.outbound.port, agent, Caller([]))  # callconsent_out_outbound
        assert sim.exited and sorted(agent.keys.bindings) == ["*41", "*42", "*43", "*49"]
        customer = await fs.dial_out(agent, "4915112345")
        fs.press(customer, "*41")  # the customer's keys reach the agent, nothing else
        fs.press(agent, "*41")
        await until(lambda: bool(customer.recordings), "recording on the customer's leg")
        assert agent.keys.passed == "*41" and not agent.recordings
        (rec,) = rows(app, Recording)
        fs.press(agent, "*49")
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
        assert f"uuid_record {customer.uuid} stop {app.spool.path_for(rec.id)}" in fs.api_log

    run(app, scenario)


# -- the caller's withdraw key -------------------------------------------------------------------


def test_withdraw_key_stops_discards_and_ends_listen_in(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "withdraw", Caller(["1"]))
        sim = leg.sim  # type: ignore[attr-defined]
        assert ("bind_digit_action", BIND.format("9")) in sim.executed
        assert sim.executed.index(("bind_digit_action", BIND.format("9"))) == len(sim.executed) - 1
        assert sim.exited and list(leg.keys.bindings) == ["9"]
        (rec,) = rows(app, Recording)
        agent = await fs.bridge(leg)
        assert "9" not in agent.keys.bindings  # the agent's leg has only the agents' codes
        supervisor = fs.new_leg("callconsent_listen", "2001")
        fs.listen(supervisor, leg.uuid)
        fs.talk(leg, 0.5)
        fs.press(agent, "9")  # the agent cannot withdraw for the caller: the caller hears it
        fs.press(leg, "5")  # another key of the caller reaches the agent
        assert leg.keys.passed == "9" and agent.keys.passed == "5"
        fs.press(leg, "9")
        await until(lambda: not supervisor.up, "listener cut off")
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
        assert f"uuid_record {leg.uuid} stop {app.spool.path_for(rec.id)}" in fs.api_log
        assert f"uuid_setvar {leg.uuid} eavesdrop_group" in fs.api_log
        assert "eavesdrop_group" not in leg.variables
        assert leg.variables["consent_status"] == "withdrawn"
        assert changes(app) == ["withdrawn"] and rows(app, Recording)[0].id == rec.id
        fs.press(agent, "*41")  # no new recording after a withdrawal
        await until(lambda: any("uuid_broadcast" in c for c in fs.api_log), "start refused")
        assert len(rows(app, Recording)) == 1

    run(app, scenario)


def test_withdraw_under_stop_keeps_what_was_recorded(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "withdraw_keep", Caller(["1"]))
        assert ("bind_digit_action", BIND.format("#")) in leg.sim.executed  # type: ignore[attr-defined]
        await fs.bridge(leg)
        fs.talk(leg, 0.5)
        fs.press(leg, "#")
        await until(lambda: rows(app, Recording)[0].state == "closed", "stopped, kept")
        assert changes(app) == ["withdrawn"]
        with wave.open(str(app.spool.path_for(rows(app, Recording)[0].id))) as w:
            assert w.getnframes() == 4000

    run(app, scenario)


@pytest.mark.parametrize(("campaign", "answers"), [("withdraw", ["2"]), ("default", ["1"])])
def test_no_withdraw_key_without_consent_or_policy(
    app: App, campaign: str, answers: list[str]
) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, campaign, Caller(answers))  # declined / no withdraw_digit
        sim = leg.sim  # type: ignore[attr-defined]
        assert sim.exited and "bind_digit_action" not in [a for a, _ in sim.executed]
        agent = await fs.bridge(leg)
        fs.press(leg, "9")
        assert agent.keys.passed == "9" and changes(app) == []

    run(app, scenario)


def test_a_withdraw_event_from_the_agents_leg_is_refused(app: App) -> None:
    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "withdraw", Caller(["1"]))
        agent = await fs.bridge(leg)
        # what a misconfigured dialplan binding the key on the agent's leg would fire
        fs.dialplan.run(agent, "execute_extension", "callconsent_withdraw XML callconsent")
        fs.press(agent, "*43")  # marker, handled after it: the recording stops, consent holds
        await until(lambda: rows(app, Recording)[0].state == "closed", "stopped by the agent")
        assert changes(app) == [] and leg.variables["consent_status"] == "granted"

    run(app, scenario)


def test_no_withdraw_key_when_its_event_cannot_reach_us(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """An ESL user without the CUSTOM events: a bound key would swallow the caller's press and
    fire an event nobody hears (the recording would go on). So the key is not bound, and
    each call says why; the caller's key then reaches the agent as any other."""
    allowed = {"RECORD_START", "RECORD_STOP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_BRIDGE"}
    fs = FakeFreeSwitch(users={"cc@pbx": ("pw", allowed, {"uuid_record", "uuid_setvar"})})

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        assert "CUSTOM consent::withdraw" in svc.inbound.refused_subscriptions
        leg = await call(fs, svc, "withdraw", Caller(["1"]))
        sim = leg.sim  # type: ignore[attr-defined]
        assert sim.exited and "bind_digit_action" not in [a for a, _ in sim.executed]
        agent = await fs.bridge(leg)
        fs.press(leg, "9")
        assert agent.keys.passed == "9"
        assert rows(app, Recording)[0].state == "recording" and changes(app) == []

    with caplog.at_level("ERROR"):
        run(app, scenario, fs, esl_user="cc@pbx", esl_password="pw")
    assert "withdraw_key_not_bound" in caplog.text


def test_asterisk_only_policy_options_are_reported_not_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = CONFIG + "\n[policies.beeping]\nbeep_interval_s = 15\nwhisper = true\n"
    application = open_app(tmp_path, config, ("en",))

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        return None

    try:
        with caplog.at_level("WARNING"):
            run(application, scenario)
    finally:
        application.close()
    found = [r for r in caplog.records if r.getMessage() == "policy_option_not_on_freeswitch"]
    assert [r.kv for r in found] == [{"policy": "beeping", "options": "beep_interval_s,whisper"}]


def test_a_withdrawal_while_the_daemon_was_away_is_acted_on_after_reconnecting(
    app: App,
) -> None:
    """FreeSWITCH keeps no events for a client that is away: the withdraw extension also marks
    the leg, and the check after the reconnection reads the mark."""

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        leg = await call(fs, svc, "withdraw", Caller(["1"]))
        await fs.bridge(leg)
        fs.talk(leg, 0.5)
        await fs.drop_inbound()
        await until(lambda: not svc.inbound.connected.is_set(), "disconnected")
        fs.press(leg, "9")  # the event reaches nobody
        assert leg.variables["callconsent_withdrawn"] == "true"
        assert rows(app, Recording)[0].state == "recording" and changes(app) == []
        await until(lambda: svc.inbound.connections == 2, "reconnected")
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
        assert changes(app) == ["withdrawn"]
        assert leg.variables["consent_status"] == "withdrawn"

    run(app, scenario)


def test_a_caller_who_consents_while_the_daemon_is_away_still_gets_the_key(app: App) -> None:
    """The outbound socket does not need the inbound connection; the key is bound anyway and a
    press is read from the leg's mark once the inbound connection is back."""

    async def scenario(app: App, fs: FakeFreeSwitch, svc: FreeswitchService) -> None:
        svc.inbound.backoff = (6.0, 6.0)
        for n in (1, 2):  # the first pause is the backoff as it was; the second is away 4.8..7.2 s
            await fs.drop_inbound()
            await until(lambda: not svc.inbound.connected.is_set(), "disconnected")
            if n == 1:
                await until(lambda: svc.inbound.connections == 2, "reconnected")
        leg = await call(fs, svc, "withdraw", Caller(["1"]))
        assert ("bind_digit_action", BIND.format("9")) in leg.sim.executed  # type: ignore[attr-defined]
        await fs.bridge(leg)
        fs.press(leg, "9")
        assert svc.inbound.connections == 2 and rows(app, Recording)[0].state == "recording"
        for _ in range(200):  # the away window, longer than until()'s patience
            if svc.inbound.connections == 3:
                break
            await asyncio.sleep(0.05)
        await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
        assert changes(app) == ["withdrawn"]

    run(app, scenario)


def test_a_withdrawal_while_the_daemon_was_down_is_acted_on_after_its_restart(
    app: App,
) -> None:
    """The daemon stops during a recorded call; the caller presses the withdraw key (the
    extension marks the leg). The restarted daemon's sweep finds the call up and marked,
    rebuilds it from the store and withdraws: the recording is stopped and discarded."""

    async def scenario(app: App, fs: FakeFreeSwitch, old: FreeswitchService) -> None:
        leg = await call(fs, old, "withdraw", Caller(["1"]))
        await fs.bridge(leg)
        fs.talk(leg, 0.5)
        settings = old.settings
        await old.stop()
        fs.press(leg, "9")  # nobody hears the event
        book = CallBook(app.ledger, app.calls.policies, app.prompts)
        new = FreeswitchService(book, app.spool, settings)
        await new.start()
        try:
            await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
            assert changes(app) == ["withdrawn"]
            assert (
                f"uuid_record {leg.uuid} stop {app.spool.path_for(rows(app, Recording)[0].id)}"
                in fs.api_log
            )
        finally:
            await new.stop()

    run(app, scenario)


@pytest.mark.parametrize(
    ("campaign", "key", "reason"),
    [("withdraw", "9", "consent_withdrawn"), ("withdraw_keep", "#", "recorded_past_withdrawal")],
    ids=["stop_and_discard", "stop"],
)
def test_a_withdrawal_and_hangup_while_the_daemon_was_down_are_acted_on_after_its_restart(
    app: App, campaign: str, key: str, reason: str
) -> None:
    """Key and hangup both while the daemon is down: the leg and its variable are gone, the
    extension's mod_db mark is not. The restarted daemon's sweep withdraws before it ends the
    call. Under "stop" the recording is not kept either: it ran on after the key (nobody
    stopped it) and FreeSWITCH cannot say when the key was pressed."""

    async def scenario(app: App, fs: FakeFreeSwitch, old: FreeswitchService) -> None:
        leg = await call(fs, old, campaign, Caller(["1"]))
        await fs.bridge(leg)
        fs.talk(leg, 0.5)
        settings = old.settings
        await old.stop()
        fs.press(leg, key)  # nobody hears the event
        assert fs.dialplan.db == {("callconsent_withdrawn", leg.uuid): "1"}
        await fs.hangup_leg(leg)
        book = CallBook(app.ledger, app.calls.policies, app.prompts)
        new = FreeswitchService(book, app.spool, settings)
        await new.start()
        try:
            await until(lambda: rows(app, Recording)[0].state == "discarded", "discarded")
            assert rows(app, Recording)[0].discard_reason == reason
            (change,) = [r for r in rows(app, ConsentRecord) if r.kind == "change"]
            assert (change.status, change.method) == ("withdrawn", "caller_withdrew_while_away")
            await until(lambda: fs.dialplan.db == {}, "the mark removed")
            # asked once: the sweep hands what it found on, it does not ask again
            assert fs.api_log.count(f"db select/callconsent_withdrawn/{leg.uuid}") == 1
        finally:
            await new.stop()

    run(app, scenario)


def test_marks_no_open_call_will_read_are_removed_at_the_sweep(app: App) -> None:
    """A mark a crash left behind (its call ended in the store, its leg gone) is removed when
    the daemon logs in. mod_db keeps no time, so a mark on a leg that is still up stays, as
    does the mark of a call still open in the store."""

    async def scenario(app: App, fs: FakeFreeSwitch, old: FreeswitchService) -> None:
        leg = await call(fs, old, "withdraw", Caller(["1"]))
        await fs.bridge(leg)
        other = await call(fs, old, "withdraw", Caller(["1"]))  # open, up, held
        settings = old.settings
        await old.stop()
        stale, live = str(uuid.uuid4()), leg.uuid
        with app.ledger.db.write() as s:  # the first call's row says it ended
            s.get(Call, rows(app, Call)[0].id).ended_at = datetime.now(UTC)
        fs.dialplan.db.update(
            {("callconsent_withdrawn", k): "1" for k in (stale, live, other.uuid)}
            | {("another_realm", stale): "1"}
        )
        book = CallBook(app.ledger, app.calls.policies, app.prompts)
        new = FreeswitchService(book, app.spool, settings)
        await new.start()
        try:
            await until(lambda: f"db delete/callconsent_withdrawn/{stale}" in fs.api_log, "swept")
            assert set(fs.dialplan.db) == {
                ("callconsent_withdrawn", live),  # its leg is up
                ("callconsent_withdrawn", other.uuid),  # its call is open
                ("another_realm", stale),  # not ours
            }
            # an open call's leg is asked about once, by the orphan check, not for its mark
            assert fs.api_log.count(f"uuid_exists {other.uuid}") == 1
        finally:
            await new.stop()

    run(app, scenario)


def test_stale_mark_removal_stops_when_freeswitch_does_not_answer() -> None:
    """``uuid_exists`` unanswered (connection gone, api refused): nothing is removed and the
    other marks are not asked about one by one; the next login sweeps again."""
    keys = [str(uuid.uuid4()) for _ in range(3)]
    sent: list[str] = []
    asked: list[str] = []

    async def api(command: str) -> ApiReply:
        sent.append(command)
        return ApiReply(",".join(keys) + "\n" if command.startswith("db list/") else "+OK\n")

    async def exists(leg: str) -> bool | None:
        asked.append(leg)
        return None

    assert asyncio.run(DbMarks(api).remove_stale(set(), exists)) == 0
    assert asked == keys[:1]
    assert sent == ["db list/callconsent_withdrawn"]
