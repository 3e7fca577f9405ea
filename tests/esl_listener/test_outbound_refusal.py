"""A ``connect`` reply FreeSWITCH (or whoever connects) sends with a ``Unique-ID`` that is not
a channel UUID is refused with ONE warning line saying what and why: no error, no traceback,
nothing stored, and the next (valid) call is served as usual."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from freeswitch_rig import call, open_app, rows, run, until
from freeswitch_sim import CONNECT_TEMPLATE, Caller, fs_encode

from callconsent.app import App
from callconsent.logs import KeyValueFormatter
from recorder.store.models import AuditEntry, Call, Recording


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = open_app(tmp_path, '[daemon]\ndata_dir = "data"\nnode = "pbx-test"\n', ("en",))
    yield application
    application.close()


def connect_reply(unique_id: str) -> bytes:
    """The captured reply to ``connect``, its channel's Unique-ID replaced (URL-encoded, as
    FreeSWITCH writes header values)."""
    headers = [(k, unique_id if k == "Unique-ID" else v) for k, v in CONNECT_TEMPLATE]
    return ("".join(f"{k}: {fs_encode(v)}\n" for k, v in headers) + "\n").encode()


async def hostile_connect(port: int, unique_id: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"connect\n\n"
        writer.write(connect_reply(unique_id))
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # until the daemon hangs up
    finally:
        writer.close()


@pytest.mark.parametrize(
    "unique_id",
    ["../../etc/passwd", "a b", "x;hangup", "%2e%2e", "", "a" * 65, "ü-2c1e", "id\x00nul"],
)
def test_a_connect_whose_unique_id_is_not_a_uuid_is_one_warning(
    app: App, caplog: pytest.LogCaptureFixture, unique_id: str
) -> None:
    async def scenario(app: App, fs, svc) -> None:  # type: ignore[no-untyped-def]
        caplog.clear()
        sent_back = await hostile_connect(svc.outbound.port, unique_id)
        await until(lambda: svc.outbound.active_sessions == 0, "the session is over")
        assert b"uuid_record" not in sent_back and b"execute" not in sent_back
        refused = [r for r in caplog.records if r.getMessage() == "outbound_session_refused"]
        assert len(refused) == 1, [r.getMessage() for r in caplog.records]
        assert all(r.levelno < logging.ERROR and not r.exc_info for r in caplog.records)
        line = KeyValueFormatter().format(refused[0])
        assert "\n" not in line and "not a channel UUID" in line and "conn=outbound-" in line
        assert refused[0].levelno == logging.WARNING
        assert rows(app, Call) == [] and rows(app, Recording) == [] and rows(app, AuditEntry) == []
        # the daemon still serves the next call
        await call(fs, svc, "default", Caller(["1", "hangup"]))
        await until(lambda: [r.state for r in rows(app, Recording)] == ["closed"], "recorded")

    with caplog.at_level(logging.INFO):
        run(app, scenario)
