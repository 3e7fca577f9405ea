from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import daemon_account
import pytest

from callconsent import cli
from callconsent import config as cfgmod


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callconsent.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_use_var_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALLCONSENT_CONFIG", raising=False)
    monkeypatch.setattr(cfgmod, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    c = cfgmod.load(None)
    assert c.source == cfgmod.EMBEDDED
    assert c.data_dir == tmp_path / "var"
    assert c.database_url == f"sqlite:///{tmp_path / 'var' / 'callconsent.db'}"
    assert c.key_dir == tmp_path / "var" / "keys" and c.spool_dir == tmp_path / "var" / "spool"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\ndata_dir = "state"\n[spool]\ndir = "/var/spool/cc"\n')
    c = cfgmod.load(path)
    assert c.data_dir == tmp_path / "state"
    assert c.spool_dir == Path("/var/spool/cc")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level", "expected one of debug"),
        ("[asterisk]\nagi_port = 'x'\n", "asterisk.agi_port", "expected an integer"),
        ("[asterisk]\nagi_port = 70000\n", "asterisk.agi_port", "1..65535"),
        ("[asterisk]\nagi_host = 'localhost'\n", "asterisk.agi_host", "IP address"),
        ("[asterisk]\nenabled = 'yes'\n", "asterisk.enabled", "true or false"),
        ("[asterisk]\nami_pasword = 'x'\n", "asterisk.ami_pasword", "unknown key"),
        ("[astersk]\n", "astersk", "unknown section"),
        ("[policies.sales]\nmode = 'sometimes'\n", "policies.sales.mode", "expected one of"),
        (
            "[policies.default]\nsilence_outcome = 'accept'\n",
            "policies.default.silence_outcome",
            "silence is not consent",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path)
    assert err.value.key == key
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert words in str(err.value)


def test_invalid_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(cfgmod.ConfigError, match="not valid TOML"):
        cfgmod.load(write(tmp_path, "[daemon\n"))
    with pytest.raises(cfgmod.ConfigError, match="no such file"):
        cfgmod.load(tmp_path / "nope.toml")


def test_config_check_prints_the_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[policies.sales]\nrecord_from = 'agent_answer'\n")
    assert cli.main(["--config", str(path), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert f"config: {path} (valid)" in out
    assert "policy sales: mode=consent" in out and "record_from=agent_answer" in out


def test_config_check_exits_2_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[numbers]\ndefault_region = 49\n")
    assert cli.main(["--config", str(path), "config", "check"]) == 2
    assert "numbers.default_region: expected a string" in capsys.readouterr().err


def _commands(parser, prefix=()):  # type: ignore[no-untyped-def]
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


def test_every_command_and_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_commands(cli.build_parser()))
    assert ("recordings", "hold") in commands and ("subject", "erase") in commands
    assert ("retention", "run") in commands and ("audit", "export") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*command, "--help"])
        assert exit_.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith(f"usage: callconsent {' '.join(command)}"), command


def test_audit_cli_verifies_and_exports(
    config_file: Path, app, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    app.ledger.open_call(
        pbx="asterisk", pbx_call_id="1.1", campaign="sales", number="+4915112345678"
    )
    assert cli.main(["--config", str(config_file), "audit", "verify"]) == 0
    assert "audit log: 1 rows, chain intact" in capsys.readouterr().out
    out = config_file.parent / "audit.jsonl"
    assert (
        cli.main(
            [
                "--config",
                str(config_file),
                "audit",
                "export",
                "--since",
                "2020-01-01",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["action"] == "call.opened" and "15112345678" not in out.read_text()


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "callconsent.toml.example"
    c = cfgmod.load(example)
    assert c.policies.default.mode.value == "consent" and c.retention.default_days == 30


def test_a_parent_directory_that_cannot_be_entered_is_named(tmp_path: Path) -> None:
    """As an unprivileged account (root enters everything): the error names the directory
    that blocks, not the file."""
    outer = Path(tempfile.mkdtemp(prefix="callconsent-locked-"))
    try:
        locked = outer / "etc" / "locked"
        locked.mkdir(parents=True)
        cfg = locked / "callconsent.toml"
        cfg.write_text('[daemon]\ndata_dir = "data"\n')
        cfg.chmod(0o644)
        outer.chmod(0o755)
        (outer / "etc").chmod(0o755)
        locked.chmod(0o700 if daemon_account.ROOT else 0o000)  # root's, closed to others
        done = subprocess.run(
            [sys.executable, "-m", "callconsent", "--config", str(cfg), "config", "check"],
            capture_output=True, text=True, timeout=60, cwd="/",
            user=daemon_account.NAME if daemon_account.ROOT else None,
        )  # fmt: skip
    finally:
        locked.chmod(0o700)
        subprocess.run(["rm", "-rf", str(outer)], check=False)
    assert done.returncode == 2
    assert f"{cfg}: cannot read it: the directory {locked} cannot be entered" in done.stderr
    assert "mode 0" in done.stderr
