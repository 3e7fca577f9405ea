"""The shipped Asterisk files, `callconsent dialplan render asterisk`, and `callconsent doctor`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from asterisk_sim_dialplan import Dialplan, parse_applicationmap

from agi.dialplan import DialplanSettings, RenderError, render
from callconsent.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "dialplan" / "asterisk"


def test_the_shipped_files_are_the_templates_rendered_with_the_defaults() -> None:
    for name, text in render(DialplanSettings()).items():
        assert (SHIPPED / name).read_text() == text, f"regenerate dialplan/asterisk/{name}"
    assert (SHIPPED / "README.md").is_file()


def test_the_shipped_files_hold_what_the_readme_promises() -> None:
    contexts = Dialplan.parse((SHIPPED / "extensions_callconsent.conf").read_text()).contexts
    assert set(contexts) == {
        "callconsent-inbound",
        "callconsent-agent-predial",
        "callconsent-agent",
        "callconsent-outbound",
        "callconsent-answer",
        "callconsent-withdraw",
        "callconsent-listen",
    }
    features = parse_applicationmap((SHIPPED / "features_callconsent.conf").read_text())
    by_name = {f.name: f for f in features.values()}
    assert {c: by_name[n].activation for c, n in (("*41", "ccstart"), ("*42", "ccpause"))} == {
        "*41": "peer",
        "*42": "self",
    }
    assert [f.code for f in features.values() if f.name in ("ccstop", "ccdiscard")] == [
        "*43",
        "*49",
    ]
    manager = (SHIPPED / "manager_callconsent.conf").read_text()
    active = [line for line in manager.splitlines() if line and not line.startswith(";")]
    assert "write = call" in active and "read = call" in active
    assert not any("system" in line for line in active)  # the system user is commented out
    readme = (SHIPPED / "README.md").read_text()
    for line in (
        "Gosub(callconsent-inbound,s,1(sales))",
        "dialplan reload",
        "#include features_callconsent.conf",
    ):
        assert line in readme


def test_render_fills_in_this_hosts_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "callconsent.toml"
    cfg.write_text(
        '[daemon]\ndata_dir = "data"\n[spool]\ndir = "/srv/cc/spool"\n'
        '[asterisk]\nagi_host = "127.0.0.2"\nagi_port = 4600\nami_user = "cc"\nami_secret = "pw1"\n'
        'feature_start = "*71"\n'
    )
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "dialplan", "render", "asterisk", "--out", str(out)]) == 0
    ext = (out / "extensions_callconsent.conf").read_text()
    assert "AGI(agi://127.0.0.2:4600/consent/${ARG1})" in ext and "/srv/cc/spool" in ext
    assert (
        "ccstart => *71,peer,AGI(agi://127.0.0.2:4600/agent/start)"
        in (out / "features_callconsent.conf").read_text()
    )
    manager = out / "manager_callconsent.conf"
    assert "[cc]\nsecret = pw1\n" in manager.read_text()
    assert stat.S_IMODE(manager.stat().st_mode) == 0o640
    assert "CHANGE-ME" not in capsys.readouterr().out


def test_render_refuses_what_would_break_a_config_file() -> None:
    with pytest.raises(RenderError):
        render(DialplanSettings(spool="/srv/a;b"))
    with pytest.raises(RenderError, match="must differ"):
        render(DialplanSettings(feature_start="*42"))


def _asterisk_conf(tmp_path: Path, features: str, queues: str, extensions: str, write: str) -> Path:
    conf = tmp_path / "etc-asterisk"
    conf.mkdir()
    (conf / "features.conf").write_text(features)
    (conf / "queues.conf").write_text(queues)
    (conf / "extensions.conf").write_text(extensions)
    (conf / "manager_callconsent.conf").write_text(f"[callconsent]\nsecret = x\nwrite = {write}\n")
    cfg = tmp_path / "callconsent.toml"
    cfg.write_text(
        f'[daemon]\ndata_dir = "data"\n[asterisk]\nenabled = true\nconf_dir = "{conf}"\n'
    )
    return cfg


def test_doctor_warns_about_recorders_that_bypass_consent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _asterisk_conf(
        tmp_path,
        "[featuremap]\nautomixmon => *3\n[applicationmap]\n#include features_callconsent.conf\n",
        "[support]\nmonitor-type = MixMonitor\n",
        "[from-pstn]\nexten => _X.,1,Dial(PJSIP/7001,30,xb(x^s^1))\n"
        " same => n,MixMonitor(/tmp/${UNIQUEID}.wav)\n"
        " same => n,Queue(support,tX)\n",
        "call,system",
    )
    assert main(["--config", str(cfg), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "automixmon" in out
    assert "monitor-type" in out
    assert "Dial options 'xb(x^s^1)'" in out
    assert "Queue options 'tX'" in out
    assert "records here without asking" in out
    assert "includes extensions_callconsent.conf" in out
    assert "write=call,system" in out


def test_doctor_is_quiet_about_a_clean_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _asterisk_conf(
        tmp_path,
        "[featuremap]\nautomixmon =>\n[applicationmap]\n#include features_callconsent.conf\n",
        "[support]\nstrategy = ringall\n",
        "[from-pstn]\nexten => _X.,1,Gosub(callconsent-inbound,s,1(sales))\n"
        " same => n,Dial(PJSIP/7001,30,b(callconsent-agent-predial^s^1)U(callconsent-agent^s^1))\n"
        "#include extensions_callconsent.conf\n",
        "call",
    )
    for name, text in render(DialplanSettings()).items():
        (tmp_path / "etc-asterisk" / name).write_text(text)
    main(["--config", str(cfg), "doctor"])
    out = capsys.readouterr().out
    assert "WARN  asterisk:" not in out  # the bypass check ("asterisk account" is another)
    assert "OK    asterisk" in out


@pytest.mark.parametrize(
    "include",
    [
        '#include "/etc/asterisk/callconsent/extensions_callconsent.conf"',
        "#include /etc/asterisk/extensions_callconsent.conf",
        '#tryinclude "extensions_callconsent.conf"',
        "#include <extensions_callconsent.conf>",
    ],
)
def test_doctor_counts_quoted_and_absolute_includes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], include: str
) -> None:
    cfg = _asterisk_conf(
        tmp_path,
        "[applicationmap]\n#include features_callconsent.conf\n",
        "[support]\nstrategy = ringall\n",
        f"[from-pstn]\nexten => _X.,1,Gosub(callconsent-inbound,s,1(sales))\n{include}\n",
        "call",
    )
    main(["--config", str(cfg), "doctor"])
    assert "includes extensions_callconsent.conf" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "include",
    [
        ";#include extensions_callconsent.conf",  # commented out
        '#include "/etc/asterisk/old_extensions_callconsent.conf"',  # another file
        "#include extensions_callconsent.conf.bak",
    ],
)
def test_doctor_does_not_count_what_is_not_our_include(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], include: str
) -> None:
    cfg = _asterisk_conf(
        tmp_path,
        "[applicationmap]\n#include features_callconsent.conf\n",
        "[support]\nstrategy = ringall\n",
        f"[from-pstn]\nexten => _X.,1,NoOp()\n{include}\n",
        "call",
    )
    main(["--config", str(cfg), "doctor"])
    assert "includes extensions_callconsent.conf" in capsys.readouterr().out


def test_the_rendered_files_name_the_config_they_come_from(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('[daemon]\ndata_dir = "data"\n')
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "dialplan", "render", "asterisk", "--out", str(out)]) == 0
    head = (out / "extensions_callconsent.conf").read_text().splitlines()[:3]
    assert any(f"from {cfg} (" in line for line in head), head
    assert "/etc/callconsent/callconsent.toml" not in "\n".join(head)
