"""Hostile caller data (numbers, names, channel variables with newlines, quotes, commas,
``..``, ``/``, NUL, 64 KB strings, right-to-left and combining characters) through both
simulated PBXs into the assembled daemon: no command it sends is altered (none carries the
value), no file lands outside the spool and the vault, every log line stays one line, and
audit rows and evidence never hold the value in clear; the audit chain and seals verify."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asterisk_sim_agi
import pytest
import sqlalchemy as sa
from asterisk_flows import run as run_asterisk
from asterisk_harness import Harness
from asterisk_sim import hangup, press
from freeswitch_rig import open_app, rows, run, until
from freeswitch_sim import Caller
from wirefuzz import LogTap, problems_in

from callconsent.app import App
from recorder.store import audit
from recorder.store.models import AuditEntry, Call, ConsentRecord, Recording

MARK = "INJ7"  # in every hostile value, so a copy of it is easy to find
HOSTILE = {
    "newline-exec": f'{MARK}"\nEXEC System(touch /tmp/pwned)\n',
    "crlf-header": f"{MARK}\r\nEvent-Name: CHANNEL_HANGUP\r\n\r\n",
    "quotes-commas": f"{MARK}\",'|;,$(id)`id`${{SHELL(id)}}",
    "dotdot-slash": f"../../../../tmp/{MARK}/../../etc/passwd",
    "nul": f"{MARK}\x00tail",
    "rtl-combining": f"{MARK}\u202eevil\u202c e\u0301\u0308\u0327 \u2028next",
    "64k": MARK + "A" * 65536,
    "digits-and-junk": f"+49 151 {MARK} 1234567",
}


def files_outside(root: Path, allowed: list[Path]) -> list[str]:
    """Files under ``root`` that are neither in an allowed directory nor the daemon's own."""
    out = []
    for path in root.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(a) for a in allowed):
            out.append(str(path.relative_to(root)))
    return out


def no_copy_in_store(app: App) -> None:
    with app.db.read() as s:
        details = list(s.scalars(sa.select(AuditEntry.details)))
        evidence = [repr(r.__dict__) for r in s.scalars(sa.select(ConsentRecord))]
        recordings = [(r.spool_path, r.pbx_channel or "") for r in s.scalars(sa.select(Recording))]
        report = audit.verify(s)
    assert not [d for d in details if MARK in d], "an audit row holds the hostile value"
    assert not [e for e in evidence if MARK in e], "the evidence holds the hostile value"
    assert not [r for r in recordings if MARK in "".join(r)]
    assert report.ok, (report.problems, report.content)


def one_line_logs_without_the_value(tap: LogTap) -> None:
    records = tap.take()
    assert problems_in(tap, records) == []
    lines = [tap.line(r) for r in records]
    shown = [tap.line(r) for r in records if r.levelno >= logging.INFO]  # the default level
    assert [ln[:300] for ln in shown if MARK in ln] == [], "caller data stays out of the log"
    assert all(len(ln.splitlines()) == 1 for ln in lines)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_asterisk_hostile_caller_number_and_name(
    tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[str] = []  # every AGI command the daemon sent, whichever channel
    real_init = asterisk_sim_agi.AgiCall.__init__

    def recording_init(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        real_init(self, *a, **kw)
        self.commands = commands

    monkeypatch.setattr(asterisk_sim_agi.AgiCall, "__init__", recording_init)

    async def scenario(h: Harness) -> None:
        with LogTap() as tap:
            c = await h.sim.inbound(
                "sales", [press("1", "consent", 1.2), hangup("talk", 1.0)], number=value, name=value
            )
            await h.settle()
            one_line_logs_without_the_value(tap)
        cust = c.customer
        if len(value) > 16384:  # over the environment limit: refused at the door, fail closed
            assert c.gosub_retval == "unavailable" and h.rows(Call) == h.rows(Recording) == []
            no_copy_in_store(h.app)
            return
        assert c.gosub_retval == "granted"
        assert commands and not [x for x in commands if MARK in x or "\n" in x.rstrip("\n")]
        apps = [" ".join(e) for e in h.sim.exec_log]
        assert apps and not [x for x in apps if MARK in x], "a dialplan application got it"
        row = h.call_row(cust.linkedid)
        assert row.number_kind in ("e164", "unparsed") and row.number_enc is not None
        (rec,) = h.recordings(row.id)
        spooled = Path(rec.spool_path)
        assert spooled.parent == h.app.spool.path and spooled.is_file()  # noqa: ASYNC240
        no_copy_in_store(h.app)
        allowed = [h.app.spool.path, h.app.config.prompt_dir, h.dialplan_dir]
        daemon_files = {"callconsent.toml", "callconsent.db", "callconsent.db-wal"}
        outside = [f for f in files_outside(tmp_path, allowed) if Path(f).name not in daemon_files]
        assert [f for f in outside if "shm" not in f and "keys" not in f] == []
        assert not Path("/tmp/pwned").exists()  # noqa: ASYNC240

    run_asterisk(tmp_path / "ast", scenario)


@pytest.fixture
def fs_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    application = open_app(tmp_path, '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n', ("en",))
    yield application
    application.close()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_freeswitch_hostile_number_and_channel_variables(
    fs_app: App, tmp_path: Path, value: str
) -> None:
    async def scenario(app: App, fs, svc) -> None:  # type: ignore[no-untyped-def]
        with LogTap() as tap:
            leg = fs.new_leg("consent", value, socket_path=f"consent/{value}")
            leg.variables.update(
                {"default_language": value, "callconsent_agent": value, "sip_from_display": value}
            )
            sim = await fs.call(svc.outbound.port, leg, Caller(["1", "hangup"]))
            await until(lambda: len(app.calls) == 0, "the call is over")
            await asyncio.sleep(0.05)
            one_line_logs_without_the_value(tap)
        sent = [*fs.api_log, *(f"{a} {b}" for a, b in fs.sendmsg_log), *sim.commands]
        assert sent and not [x for x in sent if MARK in x], "a command carried the value"
        calls = rows(app, Call)
        recordings = rows(app, Recording)
        if calls:  # taken: decided, recorded in the spool
            assert [r.state for r in recordings] == ["closed"]
            assert Path(recordings[0].spool_path).parent == app.spool.path
        else:  # refused at the door (too large for a header): nothing of it anywhere
            assert recordings == []
        no_copy_in_store(app)
        assert [p for p in app.spool.path.iterdir() if MARK in p.name] == []
        assert not Path("/tmp/pwned").exists()  # noqa: ASYNC240

    logging.getLogger().setLevel(logging.INFO)
    run(fs_app, scenario)
