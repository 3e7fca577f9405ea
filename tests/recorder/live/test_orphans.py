"""Open calls of a daemon that restarted (recorder.live.orphans): ended when the PBX says every
channel they had is gone, watched until then, never ended on a guess."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import consent_ivr as c
from recorder.live.callbook import CallBook
from recorder.live.orphans import OpenCall, Orphans, open_calls
from recorder.live.withdrawals import SpoolMarks
from recorder.store.ledger import Ledger
from recorder.store.models import Call


def book_of(ledger: Ledger) -> CallBook:
    return CallBook(ledger, lambda: c.PolicyBook(), None)


def recording_call(ledger: Ledger, pbx_call_id: str, channel: str) -> str:
    ref = ledger.open_call(pbx="asterisk", pbx_call_id=pbx_call_id, campaign="sales")
    ledger.recording_started(
        ref.id, str(uuid.uuid4()), spool_path="/spool/x.wav", pbx_channel=channel
    )
    return ref.id


def ended(ledger: Ledger, call_id: str) -> bool:
    with ledger.db.read() as s:
        return s.get(Call, call_id).ended_at is not None


def test_open_calls_name_every_channel_known(ledger: Ledger) -> None:
    call_id = recording_call(ledger, "1700000000.1", "1700000000.2")
    done = recording_call(ledger, "1700000000.7", "1700000000.8")
    ledger.call_ended(done)
    other_pbx = ledger.open_call(pbx="freeswitch", pbx_call_id="uuid-1", campaign="sales")
    bare = ledger.open_call(pbx="asterisk", pbx_call_id="1700000000.9", campaign="sales")
    found = {o.id: o.channels for o in open_calls(ledger, "asterisk")}
    # the customer's channel (the recording's); a call with none known: its linkedid
    assert found == {call_id: {"1700000000.2"}, bare.id: {"1700000000.9"}}
    assert [o.id for o in open_calls(ledger, "freeswitch")] == [other_pbx.id]


def test_a_call_whose_channels_are_all_gone_ends_at_the_sweep(ledger: Ledger) -> None:
    gone = recording_call(ledger, "1.1", "1.2")
    half = recording_call(ledger, "2.1", "2.2")
    ledger.recording_started(half, str(uuid.uuid4()), spool_path="/spool/y.wav", pbx_channel="2.3")
    up = {"2.2", "2.3"}
    orphans = Orphans(book_of(ledger), "asterisk")

    async def exists(channel: str) -> bool | None:
        return channel in up

    async def scenario() -> None:
        await orphans.sweep(exists)
        assert ended(ledger, gone) and not ended(ledger, half)
        assert orphans.watches("2.2") and not orphans.watches("2.1")
        await orphans.channel_gone("9.9")  # nobody's
        assert not ended(ledger, half)
        await orphans.channel_gone("2.2")
        assert not ended(ledger, half) and not orphans.watches("2.2")  # 2.3 is still up
        await orphans.channel_gone("2.3")
        assert ended(ledger, half)

    asyncio.run(scenario())


def test_no_answer_from_the_pbx_ends_nothing(ledger: Ledger) -> None:
    call_id = recording_call(ledger, "1.1", "1.2")

    async def exists(channel: str) -> bool | None:
        return None

    asyncio.run(Orphans(book_of(ledger), "asterisk").sweep(exists))
    assert not ended(ledger, call_id)


def test_a_call_the_daemon_holds_is_left_to_its_adapter(ledger: Ledger) -> None:
    call_id = recording_call(ledger, "1.1", "1.2")
    book = book_of(ledger)
    asked: list[str] = []

    async def exists(channel: str) -> bool | None:
        asked.append(channel)
        return False

    async def scenario() -> None:
        await book.open(pbx="asterisk", pbx_call_id="1.1", campaign="sales")
        await Orphans(book, "asterisk").sweep(exists)

    asyncio.run(scenario())
    assert asked == [] and not ended(ledger, call_id)


def test_a_hangup_during_the_sweep_is_not_missed(ledger: Ledger) -> None:
    first = recording_call(ledger, "1.1", "1.2")
    second = recording_call(ledger, "2.1", "2.2")
    orphans = Orphans(book_of(ledger), "asterisk")

    async def exists(channel: str) -> bool | None:
        if channel == "2.2":  # the sweep is still busy when 1.2's Hangup comes
            await orphans.channel_gone("1.2")
        return True

    asyncio.run(orphans.sweep(exists))
    assert ended(ledger, first) and not ended(ledger, second)
    assert not orphans.watches("1.2") and orphans.watches("2.2")


def test_one_call_that_fails_does_not_stop_the_sweep(ledger: Ledger) -> None:
    failing = recording_call(ledger, "1.1", "1.2")
    gone = recording_call(ledger, "2.1", "2.2")
    up = recording_call(ledger, "3.1", "3.2")
    orphans = Orphans(book_of(ledger), "asterisk")

    async def exists(channel: str) -> bool | None:
        return channel != "2.2"

    async def on_alive(call: OpenCall) -> None:
        if call.id == failing:
            raise TimeoutError("the PBX did not answer a Setvar")

    asyncio.run(orphans.sweep(exists, on_alive))
    assert ended(ledger, gone) and not ended(ledger, up) and not ended(ledger, failing)
    assert orphans.watches("3.2") and orphans.watches("1.2")  # still watched for its hangup


class _UnreadableMarks:
    """A PBX whose withdraw marks cannot be read right now (its connection dropped)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def find(self, channel: str) -> None:
        self.asked.append(channel)
        raise ConnectionError("the PBX went away")

    async def clear(self, channel: str) -> None:
        raise AssertionError("nothing was found, so nothing is cleared")


def test_a_gone_call_whose_withdraw_marks_cannot_be_read_is_not_ended(ledger: Ledger) -> None:
    """Ending it would let the finalizer keep a recording whose caller may have withdrawn:
    the next login's sweep asks again."""
    call_id = recording_call(ledger, "1.1", "1.2")
    book = book_of(ledger)
    marks = book.marks["asterisk"] = _UnreadableMarks()

    async def exists(channel: str) -> bool | None:
        return False

    asyncio.run(Orphans(book, "asterisk").sweep(exists))
    assert marks.asked == ["1.2"] and not ended(ledger, call_id)
    book.marks.clear()  # readable again (here: none kept at all)
    asyncio.run(Orphans(book, "asterisk").sweep(exists))
    assert ended(ledger, call_id)


def test_stale_spool_marks_are_removed_at_the_sweep(ledger: Ledger, tmp_path: Path) -> None:
    """A mark of no open call older than a day (a crash between a call's end and its mark's
    removal) is removed; a newer one (a call may open meanwhile), an open call's, and any
    other spool file stay."""
    recording_call(ledger, "3.1", "3.2")  # open, its channel up
    book = book_of(ledger)
    spool = tmp_path / "spool"
    spool.mkdir()
    book.marks["asterisk"] = SpoolMarks(spool)
    two_days_ago = time.time() - 2 * 86400
    for name, old in (
        ("withdrawn-9.9", True),
        ("withdrawn-8.8", False),
        ("withdrawn-3.2", True),
        ("0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d11.wav", True),
    ):
        (spool / name).write_text("1795345576")
        if old:
            os.utime(spool / name, (two_days_ago, two_days_ago))

    async def exists(channel: str) -> bool | None:
        return channel == "3.2"

    asyncio.run(Orphans(book, "asterisk").sweep(exists))
    assert sorted(p.name for p in spool.iterdir()) == [
        "0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d11.wav",
        "withdrawn-3.2",
        "withdrawn-8.8",
    ]
