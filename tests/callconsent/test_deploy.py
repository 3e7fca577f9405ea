"""The systemd units in deploy/ are valid, and the daemon's is hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
UNITS = [
    "callconsent.service",
    "callconsent-retention.service",
    "callconsent-retention.timer",
    "callconsent-web.service",
]


def installed_copy(name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's callconsent (verify checks it)."""
    exe = Path(sys.executable).parent / "callconsent"
    text = (DEPLOY / name).read_text().replace("/opt/callconsent/bin/callconsent", str(exe))
    path = tmp_path / name
    path.write_text(text)
    if name.endswith(".timer"):  # a timer is verified together with its service
        (tmp_path / name.replace(".timer", ".service")).write_text(
            (DEPLOY / name.replace(".timer", ".service"))
            .read_text()
            .replace("/opt/callconsent/bin/callconsent", str(exe))
        )
    return path


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_without_warnings(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "verify", str(installed_copy(name, tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_daemon_unit_is_hardened(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=yes",
            str(installed_copy("callconsent.service", tmp_path)),
        ],
        capture_output=True,
        text=True,
    )
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert score <= 2.0, result.stdout[-2000:]


def test_daemon_unit_asks_for_notify_and_watchdog() -> None:
    text = (DEPLOY / "callconsent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "User=callconsent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=callconsent",
        "ExecReload=/bin/kill -HUP",
    ):
        assert line in text
