"""The simulator must not disagree with the captures: every line and message it sends has
the form of one Asterisk sent, and the channel variables of a bridged consent call come out as
they did on the real PBX (``summary-s1/s4a/s4b``)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from asterisk_captures import bridge_summary, fixtures, parse_agi_capture, parse_ami_capture
from asterisk_flows import run
from asterisk_harness import Harness
from asterisk_sim import SimChannel, hangup, press

# Forms Asterisk 22 sends that no capture happens to contain, with where they come from.
NOT_CAPTURED = {
    ("Response", "Success", "Ping"),  # manager.c action_ping
    ("Response", "Error", "Authentication failed"),  # manager.c authenticate()
    ("Response", "Success", "DTMF successfully queued"),  # app_senddtmf.c manager_play_dtmf
    ("Response", "Error", "Channel not found"),  # app_senddtmf.c manager_play_dtmf
}


def agi_shape(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    if text.startswith("agi_"):
        return text.split(":", 1)[0]
    text = re.sub(r"\(.*\)", "(…)", text)
    return re.sub(r"-?\d+", "N", text)


def ami_shape(raw: bytes) -> tuple[str, ...]:
    headers = [line.partition(": ") for line in raw.decode().split("\r\n") if ": " in line]
    kind = headers[0][0]
    if kind == "Event":
        return ("Event", headers[0][2], *(k for k, _, _ in headers[1:]))
    message = next((v for k, _, v in headers if k in ("Message", "Ping")), "")
    if kind == "Response" and any(k == "Ping" for k, _, _ in headers):
        message = "Ping"
    if kind == "Response" and message.startswith("Invalid/unknown command"):
        message = "Invalid/unknown command"
    extra = tuple(k for k, _, _ in headers if k not in ("Response", "ActionID", "Message"))
    return ("Response", headers[0][2], message, *extra)


def captured_agi_shapes() -> set[str]:
    shapes: set[str] = set()
    for path in fixtures("asterisk*/agi-*.log"):
        for conn in parse_agi_capture(path):
            shapes |= {agi_shape(line) for line in conn.rx_lines}
    return shapes


def captured_ami_shapes() -> set[tuple[str, ...]]:
    shapes: set[tuple[str, ...]] = set()
    for path in fixtures("asterisk-bridge/ami-*.log"):
        shapes |= {
            ami_shape(m.raw)
            for m in parse_ami_capture(path)
            if m.direction == "RX" and m.raw.startswith((b"Event", b"Response"))
        }
    return shapes


def test_everything_the_simulator_sends_has_a_captured_form(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        calls = [
            h.sim.inbound(
                "sales",
                [press("1")],  # hangs up once the agent's codes have run
                agent_script=[press("*42", "talk", 0.5), press("*43", "talk", 0.5)],
            ),
            h.sim.inbound("sales", [press("2"), hangup("talk", 1.0)]),
            h.sim.inbound("sales", [hangup("talk", 1.0)]),
            h.sim.inbound("sales", [hangup("consent", 0.5)]),
            h.sim.inbound("sales", [press("1"), hangup("thanks", 0.5)]),
        ]
        await asyncio.gather(*calls)
        await h.settle()

    sent: dict[str, list[bytes]] = {}

    async def capture(h: Harness) -> None:
        await scenario(h)
        sent["agi"] = list(h.sim.agi_sent)
        sent["ami"] = list(h.sim.ami.sent)

    run(tmp_path, capture)
    agi_lines = [
        line for chunk in sent["agi"] for line in chunk.splitlines(keepends=True) if line != b"\n"
    ]
    agi_forms = captured_agi_shapes()
    assert {agi_shape(line) for line in agi_lines} - agi_forms == set()
    ami_forms = captured_ami_shapes()
    extra = {ami_shape(raw) for raw in sent["ami"]} - ami_forms
    assert {s[:3] for s in extra} <= NOT_CAPTURED, extra


def test_the_environment_has_the_captured_keys_in_the_captured_order() -> None:
    from asterisk_sim_agi import environment

    class _Chan:
        name, uid, language = "Local/cust@cc-inbound-00000025;2", "1795348625.75", "en"
        callerid_num, callerid_name, pres = "5550100", "Customer s1", "allowed_not_screened"
        context, exten = "callconsent-inbound", "s"

    ours = environment(_Chan(), "agi://127.0.0.1:4573/consent", "consent", ("sales",))  # type: ignore[arg-type]
    conn = parse_agi_capture(next(iter(fixtures("asterisk-bridge/agi-s1_consent_bridge.log"))))[0]
    keys = [line.split(b":")[0] for line in conn.environment]
    assert [line.split(b":")[0] for line in ours.splitlines(keepends=True)] == keys


def _snapshot(chan: SimChannel, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        if name.startswith("__"):
            out[name] = chan.get_var(name) or ""
        elif "(" in name:
            out[name] = chan.evaluate("${" + name + "}")
        else:
            out[name] = chan.get_var(name) or ""
    return out


def test_channel_variables_of_a_bridged_call_match_the_real_pbx(tmp_path: Path) -> None:
    """summary-s1: CONSENT_STATUS on both legs, __CONSENT_STATUS reads empty, AGISTATUS
    survives Return, DYNAMIC_FEATURES only on the agent leg, BRIDGEPEER names the other leg."""
    summary = bridge_summary("s1_consent_bridge")
    legs = summary["calls"][0]
    real = summary["getvar_after_bridge"]
    names = ["CONSENT_STATUS", "__CONSENT_STATUS", "AGISTATUS", "GOSUB_RETVAL", "SPYGROUP"]

    async def scenario(h: Harness) -> None:
        task = asyncio.create_task(
            h.sim.inbound("sales", [press("1"), hangup("talk", 5.0)], agent_script=[])
        )
        await h.sim.wait_until(lambda: h.sim.customers() and h.sim.customers()[-1].peer is not None)
        cust = h.sim.customers()[-1]
        agent = cust.peer
        assert agent is not None
        ours = {"cust2": _snapshot(cust, names), "agent1": _snapshot(agent, names)}
        for role in ("cust2", "agent1"):
            expected = real[legs[role]]
            for name in names:
                assert ours[role][name] == expected[name], (role, name)
        assert real[legs["cust2"]]["DYNAMIC_FEATURES"] == "" and "DYNAMIC_FEATURES" not in cust.vars
        assert real[legs["agent1"]]["DYNAMIC_FEATURES"] and agent.vars["DYNAMIC_FEATURES"]
        assert cust.get_var("BRIDGEPEER") == agent.name and agent.get_var("BRIDGEPEER") == cust.name
        await task

    run(tmp_path, scenario, policies="[policies.sales]\nmonitoring_allowed = true\n")


def test_a_service_that_is_down_or_silent_gives_unavailable_like_the_real_pbx(
    tmp_path: Path,
) -> None:
    """summary-s4a (no server) and s4b (a session that closed at once)."""
    names = ["AGISTATUS", "CONSENT_STATUS", "GOSUB_RETVAL"]

    async def scenario(h: Harness) -> None:
        for scenario_name in ("s4b_agi_emptysession", "s4a_agi_noserver"):
            summary = bridge_summary(scenario_name)
            legs, real = summary["calls"][0], summary["getvar_after_bridge"]
            if scenario_name == "s4a_agi_noserver":
                await h.service.server.stop()
                campaign = "sales"
            else:
                campaign = "not a campaign!"  # our server closes the session at once
            before = len(h.sim.customers())
            task = asyncio.create_task(
                h.sim.inbound(campaign, [hangup("talk", 5.0)], agent_script=[])
            )
            await h.sim.wait_until(
                lambda: len(h.sim.customers()) > before and h.sim.customers()[-1].peer  # noqa: B023
            )
            cust = h.sim.customers()[-1]
            assert cust.peer is not None
            assert _snapshot(cust, names) == {n: real[legs["cust2"]][n] for n in names}
            assert _snapshot(cust.peer, ["CONSENT_STATUS"])["CONSENT_STATUS"] == "unavailable"
            h.sim.hangup(cust)
            await task

    run(tmp_path, scenario)
