"""SIGKILL and SIGTERM at random moments under load (``bench/soak.py --kill``): after each
restart every call is accounted for — no decision lost or stored twice, no recording lost,
left in the spool or duplicated — and the audit chain with its seals verifies.

About a minute each, so they run in ``make reliability`` (CALLCONSENT_RELIABILITY_HEAVY=1),
not in ``make test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
heavy = pytest.mark.skipif(
    os.environ.get("CALLCONSENT_RELIABILITY_HEAVY") != "1",
    reason="a minute of load: make reliability runs it (CALLCONSENT_RELIABILITY_HEAVY=1)",
)


def soak(*args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), *args],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith('{"bench": "soak"')]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1])


@heavy
@pytest.mark.parametrize("signal_args", [[], ["--term"]], ids=["SIGKILL", "SIGTERM"])
def test_every_call_is_accounted_for_after_restarts(signal_args: list[str]) -> None:
    f = soak("--minutes", "0.6", "--rate", "2", "--kill", "2", *signal_args)
    assert len(f["kills"]) == 2
    assert f["calls_completed"] >= 40 and f["call_failures"] == []
    assert (f["lost"], f["duplicated"], f["wrong_outcome"], f["stray_calls"]) == (0, 0, 0, 0), f[
        "examples"
    ]
    assert f["recordings_finalised"] == f["recordings_expected"] > 0
    assert f["spool_leftovers"] == 0
    assert f["audit_ok"] and f["daemon_errors"] == []
    assert f["unserved_during_kills"] <= 4 * len(f["kills"])  # only calls the kills overlapped
