"""Audio through the web equals `callconsent recordings decrypt`, byte for byte, for the whole
file and any range; only the segments a range needs are decrypted; nothing is cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ON_BOTH_STORES, World
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recstore import PASSPHRASE

from callconsent import cli
from recorder.store.models import AuditEntry, Recording
from recorder.vault import fileformat as ff
from web import audio as audio_mod

pytestmark = ON_BOTH_STORES  # every test here on SQLite and on PostgreSQL


@pytest.fixture
def decrypted(
    world: World, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> bytes:
    """The alice recording as the CLI decrypts it."""
    monkeypatch.setenv("CALLCONSENT_KEY_PASSPHRASE", PASSPHRASE.decode())
    out = tmp_path / "cli.wav"
    rid = world.recordings["alice"]
    assert (
        cli.main(
            [
                "--config",
                str(config_file),
                "recordings",
                "decrypt",
                rid,
                "-o",
                str(out),
                "--reason",
                "t",
            ]
        )
        == 0
    )
    return out.read_bytes()


def test_whole_file_equals_the_cli_decrypt(world: World, decrypted: bytes) -> None:
    rid = world.recordings["alice"]
    assert len(decrypted) > 3 * ff.SEGMENT_SIZE  # several segments, so ranges cross them
    r = world.client("supervisor").get(f"/recordings/{rid}/audio")
    assert r.status_code == 200
    assert r.content == decrypted
    assert r.headers["content-length"] == str(len(decrypted))
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["accept-ranges"] == "bytes"
    api = world.client("supervisor").get(f"/api/v1/recordings/{rid}/audio")
    assert api.content == decrypted and "attachment" in api.headers["content-disposition"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_range_equals_the_same_bytes_of_the_cli_decrypt(
    world: World, decrypted: bytes, data: st.DataObject
) -> None:
    size = len(decrypted)
    start = data.draw(st.integers(0, size - 1), label="start")
    form = data.draw(st.sampled_from(["closed", "open", "suffix", "past_end"]), label="form")
    end = size - 1
    if form == "closed":
        end = data.draw(st.integers(start, size - 1), label="end")
        header = f"bytes={start}-{end}"
    elif form == "open":
        header = f"bytes={start}-"
    elif form == "suffix":
        n = data.draw(st.integers(1, size + 10), label="n")
        header, start = f"bytes=-{n}", max(size - n, 0)
    else:
        header = f"bytes={start}-{size + 1000}"
    rid = world.recordings["alice"]
    r = world.client("supervisor").get(f"/recordings/{rid}/audio", headers={"Range": header})
    assert r.status_code == 206
    assert r.content == decrypted[start : end + 1], f"{header}: the bytes differ"
    assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"


def test_a_range_decrypts_only_the_segments_it_needs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = audio_mod.ClearAudio.segment

    def spy(self: audio_mod.ClearAudio, index: int) -> bytes:
        seen.append(index)
        return original(self, index)

    monkeypatch.setattr(audio_mod.ClearAudio, "segment", spy)
    rid = world.recordings["alice"]
    seg = ff.SEGMENT_SIZE
    r = world.client("supervisor").get(
        f"/recordings/{rid}/audio", headers={"Range": f"bytes={2 * seg + 5}-{2 * seg + 10}"}
    )
    assert r.status_code == 206 and len(r.content) == 6
    assert seen == [2]


@pytest.mark.parametrize(
    "header",
    ["bytes=abc", "bytes=5-1", "bytes=0-1,4-5", "items=0-1", "bytes=-0", "bytes=99999999-"],
)
def test_malformed_or_unsatisfiable_ranges_get_416(world: World, header: str) -> None:
    rid = world.recordings["alice"]
    r = world.client("supervisor").get(f"/recordings/{rid}/audio", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"].startswith("bytes */")


def test_a_tampered_file_yields_no_audio(world: World) -> None:
    rid = world.recordings["alice"]
    with world.services.db.read() as s:
        path = Path(s.get(Recording, rid).ciphertext_path)
    data = bytearray(path.read_bytes())
    data[ff.HEADER.size + ff.SLOT_AREA_SIZE + 100] ^= 1  # inside segment 0
    path.write_bytes(bytes(data))
    c = world.client("supervisor")
    early = c.get(f"/recordings/{rid}/audio", headers={"Range": "bytes=0-10"})
    assert early.status_code == 422 and "does not authenticate" in early.text
    late = c.get(
        f"/recordings/{rid}/audio",
        headers={"Range": f"bytes={ff.SEGMENT_SIZE * 2}-{ff.SEGMENT_SIZE * 2 + 9}"},
    )
    assert late.status_code == 206  # other segments still authenticate on their own


def test_playback_is_audited_once_per_play_not_per_seek(world: World) -> None:
    rid = world.recordings["alice"]
    c = world.client("supervisor")
    c.get(f"/recordings/{rid}/audio", headers={"Range": "bytes=0-"})
    c.get(f"/recordings/{rid}/audio", headers={"Range": "bytes=70000-"})
    c.get(f"/recordings/{rid}/audio?download=1")
    with world.services.db.read() as s:
        rows = s.scalars(
            sa.select(AuditEntry).where(
                AuditEntry.subject_id == rid,
                AuditEntry.action.in_(["recording.played", "recording.downloaded"]),
            )
        ).all()
    assert [(r.action, r.actor) for r in rows] == [
        ("recording.played", "sam"),
        ("recording.downloaded", "sam"),
    ]


def test_an_agent_may_play_but_not_download(world: World) -> None:
    rid = world.recordings["alice"]
    c = world.client("agent")
    assert c.get(f"/recordings/{rid}/audio").status_code == 200
    assert c.get(f"/recordings/{rid}/audio?download=1").status_code == 403


def test_without_keys_everything_but_audio_works_and_the_page_says_why(world: World) -> None:
    world.services.keys = None
    world.services.keys_problem = "no key file is configured"
    c = world.client("supervisor")
    rid = world.recordings["alice"]
    page = c.get(f"/recordings/{rid}")
    assert (
        page.status_code == 200 and "Audio is unavailable: no key file is configured" in page.text
    )
    assert "<audio" not in page.text
    assert c.get(f"/recordings/{rid}/audio").status_code == 503
    assert c.get("/calls").status_code == 200


def test_a_head_request_is_not_a_play(world: World) -> None:
    rid = world.recordings["alice"]
    r = world.client("supervisor").head(f"/recordings/{rid}/audio")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(world.wavs[rid]))
    with world.services.db.read() as s:
        played = s.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "recording.played")
        ).all()
    assert played == []
