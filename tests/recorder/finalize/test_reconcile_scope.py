"""The periodic reconcile queues what the finalizer can act on, not every call in progress:
with thousands of calls up, queueing each one's open recording every minute cost a burst of
store reads that grew with the load (bench/daemon_load.py's long round)."""

from __future__ import annotations

import pytest
from recstore import Rig, make_rig

from callconsent.app import App


@pytest.fixture
def rig(app: App) -> Rig:
    return make_rig(app)


def test_reconcile_queues_ended_and_closed_recordings_not_calls_still_up(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended, _ = rig.new_recording(ended=True)  # its close event may have been missed
    up = [rig.new_recording(ended=False)[0] for _ in range(5)]  # calls going on
    closed, _ = rig.new_recording(ended=False)
    rig.app.ledger.recording_closed(closed)
    queued: list[str] = []
    monkeypatch.setattr(rig.finalizer, "submit", queued.append)
    rig.finalizer.reconcile()
    assert ended in queued and closed in queued
    assert not set(up) & set(queued)
