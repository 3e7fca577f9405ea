"""`callconsent dialplan render freeswitch`: valid XML, this host's values, nothing else."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from callconsent.cli import main

SHIPPED = Path(__file__).resolve().parent.parent / "dialplan" / "freeswitch"


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "callconsent.toml"
    path.write_text(
        '[daemon]\ndata_dir = "data"\n\n[freeswitch]\nenabled = true\noutbound_port = 9084\n'
        'esl_user = "ccsvc@pbx.example"\nesl_password = "s3cret-Pw"\n'
        'eavesdrop_group = "sup_ok"\n' + extra
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
    user = ET.fromstring((out / "callconsent-esl-user.xml").read_text())
    params = {p.get("name"): p.get("value") for p in user.iter("param")}
    assert user.find("user").get("id") == "ccsvc"
    assert params["esl-password"] == "s3cret-Pw"
    assert params["esl-allowed-events"].endswith("CUSTOM,consent::agent_cmd,consent::listen")
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
            )
            assert not re.fullmatch(expr, "callconsent_in_sales async full")
            assert not re.fullmatch(expr, "callconsent_in_a${system(id)}")
    codes = [a.get("data") for a in root.iter("action") if a.get("application") == "bind_meta_app"]
    assert [c.split(" ")[0] for c in codes] == ["1", "2", "3", "9"]
    assert all(
        " a s event::Event-Name=CUSTOM,Event-Subclass=consent::agent_cmd," in c for c in codes
    )


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
            targets.add(data.split(" ")[0].split("=")[-1])
    assert {"callconsent_fallback", "callconsent_agent_codes"} <= targets
    for target in targets:
        hits = [name for name, expr in patterns.items() if re.search(expr, target)]
        assert len(hits) == 1, (target, hits)
