"""Keys going wrong while calls are in progress (simulated Asterisk, the assembled adapter,
the real finalizer, the daemon's /metrics endpoint).

- The key directory becomes unreadable (here: taken away, as an unmounted volume, with an
  empty mode-0000 directory in its place; as root, a mode alone would not stop us): the
  recording daemon reads it only at start-up (the number secret) and seals recordings to
  public keys kept in the store, so every recording is still encrypted and no plaintext is
  left, with no error and nothing overdue.
- The keys the finalizer does need are missing (no key epoch for the recordings' expiry
  week, the state the daemon is in when nobody ran ``keys rotate``): the plaintexts stay
  pending, said once (not once per file per retry); past the retry window the gauge
  ``callconsent_plaintext_overdue`` on /metrics counts them and ``plaintext_overdue`` is
  said once; once epochs exist, everything is finalised, ``finalize_resumed`` and then
  ``plaintext_overdue_cleared`` are said once each and the gauge is back to 0.
- The daemon restarted while the key directory is gone: it refuses to start rather than
  mint a new number secret (which would make every earlier caller's number unfindable).
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asterisk_flows import run
from asterisk_harness import Harness, write_config
from recstore import make_rig
from test_disk_faults import hang_up, recordings, said, start_calls, until
from wirefuzz import LogTap

from callconsent import config as config_mod
from callconsent.app import App, NumberSecretMissing
from callconsent.metrics_server import MetricsServer
from recorder.finalize.finalizer import FinalizerSettings
from recorder.store import audit
from recorder.store.models import Call
from recorder.vault.expiry import RetentionRule, epochs_between

NEVER_S = 3600.0


def overdue_on_metrics(port: int) -> float:
    """``callconsent_plaintext_overdue`` as the daemon's /metrics endpoint serves it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("callconsent_plaintext_overdue ")]
    return float(line.split()[1])


def test_the_key_directory_unreadable_under_load_leaves_no_plaintext(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=NEVER_S, settle_s=NEVER_S, overdue_after_s=0.2
        )
        rig = make_rig(h.app, settings=settings)
        await rig.finalizer.start()
        keydir = h.app.keydir.path
        try:
            with LogTap() as tap:
                tasks, legs = await start_calls(h, 3)
                keydir.rename(keydir.with_name("keys-unmounted"))
                keydir.mkdir(mode=0)  # an empty mount point nobody may read
                await hang_up(h, tasks, legs)
                more, legs = await start_calls(h, 2)  # calls started after it went
                await hang_up(h, more, legs)
                await until(
                    lambda: [r.state for r in recordings(h)] == ["encrypted"] * 5,
                    "all five encrypted",
                )
                await asyncio.sleep(0.3)
                await asyncio.to_thread(rig.finalizer.reconcile)
                records = tap.take()
        finally:
            await rig.finalizer.stop()
        assert os.listdir(keydir) == []
        assert [p for p in os.listdir(h.app.spool.path)] == []  # no plaintext left
        assert said(records) == [], said(records)
        assert rig.finalizer.alarms.overdue == 0
        with h.app.db.read() as s:
            assert audit.verify(s).ok

    run(tmp_path, scenario)


def test_missing_keys_keep_plaintext_pending_alarmed_once_then_finalised(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        settings = FinalizerSettings(
            reconcile_interval_s=NEVER_S, settle_s=NEVER_S, overdue_after_s=0.3
        )
        no_epoch = RetentionRule(default_days=200, max_days=365)  # epochs reach 4 weeks
        rig = make_rig(h.app, settings=settings, retention=no_epoch, weeks=4)
        await rig.finalizer.start()
        await asyncio.wait_for(rig.finalizer.started_up.wait(), 10)  # its runway warning
        endpoint = MetricsServer("127.0.0.1", 0, h.app.db)
        await endpoint.start()
        try:
            with LogTap() as tap:
                tasks, legs = await start_calls(h, 4)
                await hang_up(h, tasks, legs)
                await until(lambda: rig.finalizer.stats["pending"] >= 4, "4 pending")
                assert [r.state for r in recordings(h)] == ["closed"] * 4
                for _ in range(3):  # three passes past the window: three retries each
                    await asyncio.sleep(0.35)
                    await asyncio.to_thread(rig.finalizer.reconcile)
                await until(lambda: rig.finalizer.stats["pending"] >= 16, "3 retries each")
                overdue = await asyncio.to_thread(overdue_on_metrics, endpoint.port)
                kept = [Path(r.spool_path) for r in recordings(h)]
                assert await asyncio.to_thread(lambda: all(p.is_file() for p in kept))
                during = tap.take()
                now = datetime.now(UTC)  # `callconsent keys rotate`
                rig.keys.ensure_epochs(epochs_between(now, now + timedelta(weeks=60)), "test")
                await asyncio.to_thread(rig.finalizer.reconcile)
                await until(
                    lambda: [r.state for r in recordings(h)] == ["encrypted"] * 4,
                    "all four encrypted",
                )
                await asyncio.to_thread(rig.finalizer.reconcile)
                cleared = await asyncio.to_thread(overdue_on_metrics, endpoint.port)
                after = tap.take()
        finally:
            await endpoint.stop()
            await rig.finalizer.stop()
        assert overdue == 4 and cleared == 0
        events = said(during)
        assert events == [
            ("ERROR", "recording_pending_no_key_epoch"),
            ("ERROR", "plaintext_overdue"),
        ], events  # the runway warning came at start-up, and comes at most hourly
        line = tap.line(next(r for r in during if r.getMessage() == "plaintext_overdue"))
        assert "recordings=4" in line and "no key epoch" in line
        assert said(after) == [
            ("WARNING", "finalize_resumed"),
            ("WARNING", "plaintext_overdue_cleared"),
        ]
        assert not [r for r in during + after if r.exc_info]
        assert not os.listdir(h.app.spool.path)
        with h.app.db.read() as s:
            assert audit.verify(s).ok

    run(tmp_path, scenario)


def test_a_restart_with_the_key_directory_gone_refuses_to_mint_a_new_number_secret(
    tmp_path: Path,
) -> None:
    """A new secret would make every earlier caller's number unfindable (data-subject
    requests): the daemon must stop and say why, and start as before once it is back."""
    cfg = config_mod.load(write_config(tmp_path, "", ""))
    app = App.open(cfg)
    call = app.ledger.open_call(
        pbx="asterisk", pbx_call_id="1795348625.1", campaign="sales", number="+4915112345678"
    )
    key = app.numbers.lookup_key("+4915112345678")
    app.close()
    keydir = cfg.key_dir
    keydir.rename(keydir.with_name("keys-unmounted"))
    keydir.mkdir(mode=0)  # the mount point of a volume that is not there
    with pytest.raises(NumberSecretMissing, match=r"has no numbers\.secret, but this host.s calls"):
        App.open(cfg)
    assert os.listdir(keydir) == []  # nothing minted
    keydir.rmdir()
    keydir.with_name("keys-unmounted").rename(keydir)
    app = App.open(cfg)
    try:
        assert app.numbers.lookup_key("+4915112345678") == key
        with app.db.read() as s:
            assert s.get(Call, call.id).number_key == key
    finally:
        app.close()
