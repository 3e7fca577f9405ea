"""`callconsent dialplan render freeswitch`: valid XML, this host's values, nothing else."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from callconsent.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "dialplan" / "freeswitch"


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "callconsent.toml"
    path.write_text(
        '[daemon]\ndata_dir = "data"\n\n[freeswitch]\nenabled = true\noutbound_port = 9084\n'
        'esl_user = "ccsvc@pbx.example"\nesl_password = "s3cret-Pw"\n'
        'eavesdrop_group = "sup_ok"\nfeature_start = "*71"\nfeature_discard = "#9"\n' + extra
    )
    return path


def test_render_fills_in_this_hosts_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "--config",
                str(_config(tmp_path)),
                "dialplan",
                "render",
                "freeswitch",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        ["callconsent.xml", "callconsent-esl-user.xml", "callconsent-hardening.xml", "README.md"]
    )
    dialplan = (out / "callconsent.xml").read_text()
    root = ET.fromstring(dialplan)
    sockets = [a.get("data") for a in root.iter("action") if a.get("application") == "socket"]
    assert sockets == [
        "127.0.0.1:9084/consent/$1 async full",
        "127.0.0.1:9084/outbound/$1 async full",
    ]
    assert "eavesdrop_require_group=sup_ok" in dialplan and "8084" not in dialplan
    assert _codes(root) == {"*71": "start", "*42": "mask", "*43": "stop", "#9": "discard"}
    user = ET.fromstring((out / "callconsent-esl-user.xml").read_text())
    params = {p.get("name"): p.get("value") for p in user.iter("param")}
    assert user.find("user").get("id") == "ccsvc"
    assert params["esl-password"] == "s3cret-Pw"
    assert params["esl-allowed-events"].endswith(
        "CUSTOM,consent::agent_cmd,consent::listen,consent::withdraw"
    )
    assert oct((out / "callconsent-esl-user.xml").stat().st_mode & 0o777) == "0o640"


def test_shipped_files_are_valid_and_campaigns_cannot_carry_spaces() -> None:
    root = ET.fromstring((SHIPPED / "callconsent.xml").read_text())
    ET.fromstring((SHIPPED / "callconsent-esl-user.xml").read_text())
    ET.fromstring((SHIPPED / "callconsent-hardening.xml").read_text())
    for cond in root.iter("condition"):
        expr = cond.get("expression") or ""
        if "callconsent_" in expr and "(" in expr:
            # what lands in the socket address or an eavesdrop target is a plain token
            assert (
                re.fullmatch(expr, "callconsent_in_sales")
                or re.fullmatch(expr, "callconsent_out_sales")
                or "listen" in expr
                or expr == "^callconsent_cmd_(start|mask|stop|discard)$"  # a closed set
            )
            assert not re.fullmatch(expr, "callconsent_in_sales async full")
            assert not re.fullmatch(expr, "callconsent_in_a${system(id)}")
    assert _codes(root) == {"*41": "start", "*42": "mask", "*43": "stop", "*49": "discard"}


def _codes(root: ET.Element) -> dict[str, str]:
    """Code -> the ``cc_cmd`` its extension fires, following the dialplan as FreeSWITCH does:
    ``bind_digit_action`` on the agent's leg, then the ``callconsent_cmd_*`` extension."""
    binds = [
        a.get("data") for a in root.iter("action") if a.get("application") == "bind_digit_action"
    ]
    events = {
        ext.find("condition").get("expression"): [
            a.get("data") for a in ext.iter("action") if a.get("application") == "event"
        ]
        for ext in root.iter("extension")
    }
    found = {}
    for data in binds:
        realm, code, action, target = data.split(",")
        assert (realm, action) == ("callconsent_agent", "exec[H]:execute_extension")
        ext_name = target.removesuffix(" XML callconsent")
        ((expr, (event,)),) = [(e, v) for e, v in events.items() if re.search(e, ext_name)]
        fields = dict(f.split("=", 1) for f in event.split(","))
        assert fields["Event-Subclass"] == "consent::agent_cmd"
        found[code] = re.search(expr, ext_name)[1]
    return found


def test_render_refuses_two_commands_on_one_code(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'feature_stop = "*71"\n')
    assert main(["--config", str(cfg), "dialplan", "render", "freeswitch", "--out", "o"]) != 0


def test_render_refuses_values_that_would_break_the_files(tmp_path: Path) -> None:
    cfg = tmp_path / "callconsent.toml"
    cfg.write_text('[daemon]\ndata_dir = "d"\n[freeswitch]\neavesdrop_group = "a b"\n')
    assert (
        main(
            ["--config", str(cfg), "dialplan", "render", "freeswitch", "--out", str(tmp_path / "o")]
        )
        != 0
    )


def test_every_internal_target_is_hunted_by_exactly_one_extension() -> None:
    """A target matched by an earlier entry extension would recurse (found on the real PBX:
    ``callconsent_fallback`` once matched the inbound entry's pattern)."""
    root = ET.fromstring((SHIPPED / "callconsent.xml").read_text())
    patterns = {
        ext.get("name"): ext.find("condition").get("expression") for ext in root.iter("extension")
    }
    targets = {"callconsent_in_sales", "callconsent_out_sales", "callconsent_listen_" + "0" * 36}
    for action in root.iter("action"):
        data = action.get("data") or ""
        if data.endswith(" XML callconsent"):
            targets.add(data.split(" ")[0].split("=")[-1].split(",")[-1])
    targets.add("callconsent_withdraw")  # bound by callconsent itself (esl_listener.commands)
    assert {"callconsent_fallback", "callconsent_agent_codes", "callconsent_cmd_start"} <= targets
    for target in targets:
        hits = [name for name, expr in patterns.items() if re.search(expr, target)]
        assert len(hits) == 1, (target, hits)
