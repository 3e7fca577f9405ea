"""`make demo` works: three calls, their evidence, one recording decrypted, the audit chain."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "support" / "asterisk_demo.py"


def _demo_account_missing() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam("callconsent")
    except KeyError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.skipif(
    os.geteuid() == 0 and os.path.realpath(sys.executable).startswith("/root/"),
    reason="as root the demo runs the CLI as 'callconsent', who cannot read this interpreter",
)
@pytest.mark.skipif(
    _demo_account_missing(), reason="as root the demo needs the callconsent account"
)
def test_make_demo_shows_three_decisions_and_a_decrypted_recording() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=300, check=False
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "consent status granted" in out
    assert "consent status declined" in out
    assert "consent status no_input" in out
    assert out.count("recordings: none (the policy allows none)") == 2
    assert "sha256 matches the stored one" in out
    assert "plaintext still in the spool: False" in out
    assert "chain intact" in out
    base = Path(out.split(">>> demo directory ", 1)[1].split("\n", 1)[0])
    shutil.rmtree(base, ignore_errors=True)
