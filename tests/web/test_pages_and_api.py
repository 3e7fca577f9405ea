"""What the pages and the API show and do: filters and pagination, evidence, share links,
the DPO's actions through the CLI's own code, the audit page, the dashboard, users, tokens."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NUMBER, ON_BOTH_STORES, World, add_call
from recstore import PASSPHRASE

from callconsent import cli
from recorder.store.models import AuditEntry, Call, Recording, ShareLink
from web.app import ROUTES
from web.services import AUDIT_CHECK_MAX_AGE_S

pytestmark = ON_BOTH_STORES  # every test here on SQLite and on PostgreSQL


def actions_of(w: World, action: str) -> list[AuditEntry]:
    with w.services.db.read() as s:
        return list(
            s.scalars(
                sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
            )
        )


def test_calls_page_masks_numbers_and_an_agent_sees_only_their_calls(world: World) -> None:
    sup = world.client("supervisor").get("/calls").text
    assert world.calls["alice"] in sup and world.calls["bob"] in sup
    assert "…78" in sup and "12345678" not in sup
    agent = world.client("agent").get("/calls").text
    assert world.calls["alice"] in agent and world.calls["bob"] not in agent


def test_calls_page_escapes_every_cell(world: World) -> None:
    """The rows are rendered in Python (web.queries.CallPage.rows_html), not by Jinja's
    autoescape: markup in a campaign or an agent's name is shown as text."""
    evil = "<script>alert(1)</script>\"'&"
    call = add_call(world.rig, "x<b>y", campaign=evil, seconds=0.05)[0]
    page = world.client("supervisor").get("/calls").text
    row = next(line for line in page.split("<tr>") if call in line)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;" in row
    assert "x&lt;b&gt;y" in row and "<script>" not in page and "<b>" not in page


def test_search_by_number_in_national_notation_keeps_it_out_of_the_url(world: World) -> None:
    other = add_call(world.rig, "alice", number="+4930123456", seconds=0.1)[0]
    c = world.client("supervisor")
    r = c.post("/calls", data={"csrf_token": c.csrf, "number": "030 123456", "campaign": "sales"})
    assert r.status_code == 303
    url = r.headers["location"]
    assert "123456" not in url.replace(url.split("nk=")[1][:64], "") and "nk=" in url
    page = c.get(url).text
    assert other in page and world.calls["alice"] not in page
    bad = c.post("/calls", data={"csrf_token": c.csrf, "number": "call me"})
    assert bad.status_code == 400
    api = c.post(
        "/api/v1/calls/search", json={"number": "0049 30 123456"}, headers={"X-CSRF-Token": c.csrf}
    )
    assert [row["id"] for row in api.json()["calls"]] == [other]


def test_filters_and_keyset_pagination(world: World) -> None:
    made = [add_call(world.rig, "carl", campaign="service", seconds=0.05)[0] for _ in range(5)]
    world.services.settings = type(world.services.settings)(page_size=2)
    c = world.client("supervisor")
    seen: list[str] = []
    url: str | None = "/calls?campaign=service"
    while url:
        page = c.get(url).text
        seen += re.findall(r'href="/calls/([0-9a-f-]{36})"', page)
        more = re.search(r'id="more" href="([^"]+)"', page)
        url = more.group(1).replace("&amp;", "&") if more else None
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    api = c.get("/api/v1/calls?campaign=service&limit=3").json()
    assert len(api["calls"]) == 3 and api["next"]
    rest = c.get(f"/api/v1/calls?campaign=service&limit=3&after={api['next']}").json()
    assert {r["id"] for r in api["calls"] + rest["calls"]} == set(made) and rest["next"] is None
    assert c.get("/api/v1/calls?agent=carl&consent=declined").json()["calls"] == []
    assert (
        len(
            c.get("/api/v1/calls?agent=carl&consent=granted&direction=inbound&limit=50").json()[
                "calls"
            ]
        )
        == 5
    )
    today = datetime.now(UTC).date()
    assert c.get(f"/api/v1/calls?until={today - timedelta(days=1)}").json()["calls"] == []
    assert len(c.get(f"/api/v1/calls?since={today}&agent=carl&limit=50").json()["calls"]) == 5


def test_call_page_shows_the_evidence_as_for_a_regulator(world: World) -> None:
    page = world.client("supervisor").get(f"/calls/{world.calls['alice']}").text
    assert "decision: granted" in page and "ab" * 32 in page  # the prompt's SHA-256
    assert "1 at " in page  # the digit and its time
    assert "Policy snapshot" in page and "call.opened" in page and "recording.encrypted" in page
    assert "…78" in page
    dpo = world.client("dpo").get(f"/calls/{world.calls['alice']}").text
    assert NUMBER in dpo  # a DPO answers subject requests: the full number
    api = world.client("supervisor").get(f"/api/v1/calls/{world.calls['alice']}").json()
    assert (
        api["evidence"][0]["digits"][0]["digit"] == "1"
        and api["evidence"][0]["prompt_sha256"] == "ab" * 32
    )
    assert api["timeline"][0]["event"] == "call.opened"


def test_a_purged_recording_says_when_and_why(world: World) -> None:
    rid = world.recordings["bob"]
    world.services.custody.delete(rid, actor="dora", reason="asked")
    c = world.client("supervisor")
    page = c.get(f"/recordings/{rid}").text
    assert "deleted on" in page and "dpo_delete" in page and "<audio" not in page
    r = c.get(f"/recordings/{rid}/audio")
    assert r.status_code == 410 and "dpo_delete" in r.text


def test_share_link_plays_without_a_session_then_is_revoked(world: World) -> None:
    rid = world.recordings["alice"]
    sup = world.client("supervisor")
    page = sup.post(
        f"/recordings/{rid}/share", data={"csrf_token": sup.csrf, "hours": "2", "plays": "2"}
    ).text
    url = re.search(r'value="(https://testserver/s/[^"]+)"', page).group(1)
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 43  # 256 bits, url-safe
    stranger = world.client()
    shared = stranger.get(f"/s/{token}")
    assert shared.status_code == 200
    assert (
        "sales" in shared.text
        and "…78" not in shared.text
        and "evidence" not in shared.text.lower()
    )
    audio = stranger.get(f"/s/{token}/audio", headers={"Range": "bytes=0-99"})
    assert audio.status_code == 206 and audio.content == world.wavs[rid][:100]
    assert world.client().get(f"/s/{token}/audio").status_code == 403  # not opened by this browser
    with world.services.db.read() as s:
        link = s.scalars(sa.select(ShareLink)).one()
    assert token not in link.token_hash and link.plays_used == 1
    played = actions_of(world, "share.played")
    assert json.loads(played[0].details)["address"] and played[0].subject_id == rid
    sup.post(f"/shares/{link.id}/revoke", data={"csrf_token": sup.csrf})
    gone = world.client().get(f"/s/{token}")
    assert gone.status_code == 410 and "revoked" in gone.text
    assert stranger.get(f"/s/{token}/audio").status_code == 410
    assert [
        a.actor for a in actions_of(world, "share.created") + actions_of(world, "share.revoked")
    ] == ["sam", "sam"]


def test_share_link_plays_run_out_and_expire(world: World) -> None:
    rid = world.recordings["alice"]
    _, token = world.services.links.create(rid, user_id=1, actor="sam", hours=1, max_plays=1)
    assert world.client().get(f"/s/{token}").status_code == 200
    assert world.client().get(f"/s/{token}").status_code == 410
    _, later = world.services.links.create(rid, user_id=1, actor="sam", hours=1, max_plays=None)
    with world.services.db.write() as s:
        s.execute(sa.update(ShareLink).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert "expired" in world.client().get(f"/s/{later}").text
    c = world.client("supervisor")
    too_long = c.post(
        f"/api/v1/recordings/{rid}/shares", json={"hours": 10000}, headers={"X-CSRF-Token": c.csrf}
    )
    assert too_long.status_code == 400


def test_links_revoke_from_the_cli(world: World, config_file: Path) -> None:
    link_id, token = world.services.links.create(
        world.recordings["alice"], user_id=1, actor="sam", hours=1, max_plays=None
    )
    assert (
        cli.main(["--config", str(config_file), "links", "revoke", str(link_id), "--actor", "dora"])
        == 0
    )
    assert world.client().get(f"/s/{token}").status_code == 410
    assert actions_of(world, "share.revoked")[0].actor == "dora"
    assert cli.main(["--config", str(config_file), "links", "revoke", "999"]) == 1


def test_dpo_hold_blocks_delete_then_unhold_and_delete_as_the_cli_does(world: World) -> None:
    rid = world.recordings["alice"]
    c = world.client("dpo")
    assert (
        "held"
        in c.post(f"/recordings/{rid}/hold", data={"csrf_token": c.csrf, "reason": "case 9"}).text
    )
    refused = c.post(f"/recordings/{rid}/delete", data={"csrf_token": c.csrf, "reason": "x"})
    assert refused.status_code == 409 and "hold" in refused.text
    assert (
        c.post(f"/recordings/{rid}/delete", data={"csrf_token": c.csrf}).status_code == 400
    )  # no reason
    h = {"X-CSRF-Token": c.csrf}
    assert (
        c.post(f"/api/v1/recordings/{rid}/unhold", json={"reason": "closed"}, headers=h).json()[
            "result"
        ]
        == "released"
    )
    assert (
        c.request(
            "DELETE", f"/api/v1/recordings/{rid}", json={"reason": "asked"}, headers=h
        ).status_code
        == 200
    )
    with world.services.db.read() as s:
        rec = s.get(Recording, rid)
    assert (rec.state, rec.purge_reason) == ("purged", "dpo_delete")
    got = [
        (r.action, r.actor)
        for r in actions_of(world, "recording.held")
        + actions_of(world, "recording.released")
        + actions_of(world, "recording.deleted")
    ]
    assert got == [
        ("recording.held", "dora"),
        ("recording.released", "dora"),
        ("recording.deleted", "dora"),
    ]


@contextmanager
def files_created() -> Iterator[list[str]]:
    """Every file this process opens for writing while the block runs (``open``, ``os.open``),
    and any temporary file or directory asked of ``tempfile`` (refused)."""
    created: list[str] = []
    real_os_open, real_open = os.open, builtins.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & writing:
            created.append(str(path))
        return real_os_open(path, flags, *args, **kw)

    def open_(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if any(ch in mode for ch in "wax+") and not isinstance(file, int):
            created.append(str(file))
        return real_open(file, mode, *args, **kw)

    def no_temp(*args: Any, **kw: Any) -> Any:
        created.append("tempfile")
        raise AssertionError("an export asked for a temporary file")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "open", os_open)
        m.setattr(builtins, "open", open_)
        for name in ("mkstemp", "mkdtemp", "TemporaryDirectory", "NamedTemporaryFile"):
            m.setattr(tempfile, name, no_temp)
        yield created


def cli_export(
    config_file: Path, out: Path, monkeypatch: pytest.MonkeyPatch, code: int = 0
) -> dict[str, Any]:
    monkeypatch.setenv("CALLCONSENT_KEY_PASSPHRASE", PASSPHRASE.decode())
    args = ["--config", str(config_file), "subject", "export", "--number", NUMBER]
    args += ["--out", str(out), "--actor", "dora", "--reason", "r"]
    assert cli.main(args) == code  # 1: a recording was unreadable
    return json.loads((out / "manifest.json").read_text())


def test_subject_export_zip_is_streamed_and_holds_what_the_cli_writes(
    world: World, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zip is written as it is sent (several pieces, none bigger than a few segments),
    no file is created on the way (no decrypted audio on disk), and it holds the CLI's
    export: the same files, the same bytes, the same manifest but its time."""
    c = world.client("dpo")
    form = {"csrf_token": c.csrf, "number": "0151 12345678", "reason": "req 4"}
    with files_created() as created, c.stream("POST", "/subjects/export", data=form) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert "content-length" not in r.headers and r.headers["cache-control"] == "no-store"
        pieces = list(r.iter_raw())
    assert created == []
    assert len(pieces) > 4 and max(len(p) for p in pieces) <= 4 * 65536 + 4096
    body = b"".join(pieces)
    z = zipfile.ZipFile(io.BytesIO(body))
    assert z.testzip() is None
    manifest = json.loads(z.read("manifest.json"))
    out = tmp_path / "cli-export"
    cli_manifest = cli_export(config_file, out, monkeypatch)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(z.namelist()) == on_disk and len(on_disk) == 3
    for name in on_disk - {"manifest.json"}:
        assert z.read(name) == (out / name).read_bytes()
    assert manifest.pop("generated_at") and cli_manifest.pop("generated_at")
    assert manifest == cli_manifest
    assert actions_of(world, "subject.exported")[0].actor == "dora"
    if shutil.which("unzip"):  # a reader other than Python's takes the streamed form
        (tmp_path / "web.zip").write_bytes(body)
        check = subprocess.run(["unzip", "-t", str(tmp_path / "web.zip")], capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_subject_export_zip_lists_an_unreadable_recording_as_the_cli_does(
    world: World, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before the first byte is sent: a recording that cannot be decrypted is in the
    manifest with the reason and not in the zip; the rest is."""
    lost, kept = world.recordings["bob"], world.recordings["alice"]
    with world.services.db.read() as s:
        Path(s.get(Recording, lost).ciphertext_path).unlink()
    c = world.client("dpo")
    r = c.post(
        "/subjects/export",
        data={"csrf_token": c.csrf, "number": "0151 12345678", "reason": "req 5"},
    )
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(z.namelist()) == ["manifest.json", f"recordings/{kept}.wav"]
    recs = {
        x["id"]: x
        for call in json.loads(z.read("manifest.json"))["calls"]
        for x in call["recordings"]
    }
    assert "unreadable" in recs[lost] and "file" not in recs[lost]
    assert z.read(f"recordings/{kept}.wav") == world.wavs[kept]
    cli_manifest = cli_export(config_file, tmp_path / "cli-export", monkeypatch, code=1)
    cli_recs = {x["id"]: x for call in cli_manifest["calls"] for x in call["recordings"]}
    assert recs == cli_recs


def test_subject_erase_keeps_held_recordings(world: World) -> None:
    world.services.custody.hold(
        world.recordings["bob"], world.rig.keys, actor="dora", reason="case"
    )
    c = world.client("dpo")
    r = c.post(
        "/api/v1/subjects/erase",
        json={"number": "+49 151 12345678", "reason": "art 17"},
        headers={"X-CSRF-Token": c.csrf},
    )
    body = r.json()
    assert body["held_kept"] == [world.recordings["bob"]] and body["deleted"] == [
        world.recordings["alice"]
    ]
    with world.services.db.read() as s:
        assert s.get(Call, world.calls["alice"]).number_kind in ("erased", "e164")
    assert actions_of(world, "subject.erased")[0].actor == "dora"


def test_audit_page_shows_rows_and_the_verify_result(world: World) -> None:
    c = world.client("dpo")
    page = c.get("/audit").text
    assert "chain intact" in page and "recording.encrypted" in page
    assert "call.opened" not in c.get("/audit?action=recording.encrypted").text.split("<table")[1]
    with world.services.db.write() as s:
        s.execute(sa.update(AuditEntry).where(AuditEntry.seq == 2).values(actor="mallory"))
    # the whole chain is checked again once the last check is AUDIT_CHECK_MAX_AGE_S old
    check = world.services.audit_check
    started = check.clock()
    check.clock = lambda: started + AUDIT_CHECK_MAX_AGE_S
    assert "1 problem(s)" in c.get("/audit").text


def test_dashboard_counts_outcomes_and_states(world: World) -> None:
    page = world.client("supervisor").get("/dashboard").text
    data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', page, re.S).group(1))
    day = datetime.now(UTC).date().isoformat()
    assert data["outcomes"]["sales"][day]["granted"] == 2
    assert data["states"]["encrypted"] == 2 and data["stored_bytes"] > 240000
    assert data["next_purge"] and "chart.umd.js" in page


def test_admin_manages_users_and_tokens_in_the_browser(world: World) -> None:
    c = world.client("admin")
    form = {"csrf_token": c.csrf}
    r = c.post(
        "/admin/users",
        data=form
        | {"action": "add", "name": "quinn", "role": "supervisor", "password": "long password 1"},
    )
    assert r.status_code == 200 and "quinn" in r.text
    r = c.post(
        "/admin/users",
        data=form | {"action": "token", "name": "quinn", "label": "crm", "days": "7"},
    )
    token = re.search(r'id="new-token">.*?<code>([^<]+)</code>', r.text).group(1)
    api = world.client()
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me == {"name": "quinn", "role": "supervisor", "via": "token"}
    assert (
        c.post(
            "/admin/users", data=form | {"action": "role", "name": "quinn", "role": "dpo"}
        ).status_code
        == 200
    )
    assert (
        api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["role"] == "dpo"
    )
    c.post("/admin/users", data=form | {"action": "disable", "name": "quinn"})
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert (
        c.post(
            "/admin/users",
            data=form
            | {"action": "add", "name": "quinn", "role": "dpo", "password": "long password 1"},
        ).status_code
        == 409
    )
    assert c.post("/admin/users", data=form | {"action": "explode"}).status_code == 400


def test_api_token_needs_no_csrf_and_acts_with_the_users_role(world: World) -> None:
    _, raw = world.services.accounts.create_token("dora", "t", 1, actor="adam")
    c = world.client()
    h = {"Authorization": f"Bearer {raw}"}
    rid = world.recordings["alice"]
    assert (
        c.post(f"/api/v1/recordings/{rid}/hold", json={"reason": "x"}, headers=h).json()["result"]
        == "held"
    )
    assert actions_of(world, "recording.held")[0].actor == "dora"


def test_openapi_document_lists_every_api_route(world: World) -> None:
    doc = world.client().get("/api/v1/openapi.json").json()
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(e.method, e.path) for e in ROUTES if e.api}
    assert doc["openapi"].startswith("3.")


def test_player_page_draws_a_waveform_with_a_style_nonce_and_marks_a_withdrawal(
    world: World,
) -> None:
    import consent_ivr as c_ivr
    from recorder.store.models import Recording as Rec

    rid, call_id = world.recordings["alice"], world.calls["alice"]
    with world.services.db.read() as s:
        started = s.get(Rec, rid).started_at
    world.rig.app.ledger.log_status_change(
        call_id, c_ivr.ConsentStatus.WITHDRAWN, "caller_withdrew", started + timedelta(seconds=4)
    )
    r = world.client("supervisor").get(f"/recordings/{rid}")
    nonce = re.search(r'data-style-nonce="([^"]+)"', r.text).group(1)
    csp = r.headers["content-security-policy"]
    assert f"style-src 'self' 'nonce-{nonce}'" in csp and "script-src 'self';" in csp
    assert "/static/vendor/wavesurfer.js/regions.min.js" in r.text and "/static/player.js" in r.text
    marks = json.loads(re.search(r'id="player-marks">(.*?)</script>', r.text).group(1))
    assert marks == [{"at": 4.0, "label": "change: withdrawn"}]
    other = world.client("supervisor").get("/calls").headers["content-security-policy"]
    assert "nonce" not in other
    assert world.client().get("/static/vendor/wavesurfer.js/wavesurfer.min.js").status_code == 200


def test_player_marks_the_stretches_an_agent_paused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the call book's audit rows (recording.paused / .resumed), relative to the
    recording's start: a pause before the start counts from 0, a repeated pause is ignored, a
    pause never resumed lasts to the end (the recording is 15 s)."""
    from recorder.store.models import Recording as Rec

    rid, call_id = world.recordings["alice"], world.calls["alice"]
    with world.services.db.read() as s:
        started = s.get(Rec, rid).started_at
    ledger = world.rig.app.ledger
    for seconds, paused in (
        (-1, True),
        (1, False),
        (3, True),
        (4, True),  # repeated: the stretch still starts at 3
        (5.5, False),
        (12, True),
    ):
        moment = started + timedelta(seconds=seconds)
        monkeypatch.setattr(ledger, "_clock", lambda m=moment: m)
        ledger.recording_paused(rid, paused, "alice")
    expected = [
        {"start": 0.0, "end": 1.0},
        {"start": 3.0, "end": 5.5},
        {"start": 12.0, "end": 15.0},
    ]
    page = world.client("supervisor").get(f"/recordings/{rid}").text
    shown = json.loads(re.search(r'id="player-paused">(.*?)</script>', page).group(1))
    assert shown == expected
    listed = re.findall(r'<li class="paused">([^<]*)</li>', page)  # the page without JavaScript
    assert listed == [
        "0:00.0 to 0:01.0 paused by the agent (silence)",
        "0:03.0 to 0:05.5 paused by the agent (silence)",
        "0:12.0 to 0:15.0 paused by the agent (silence)",
    ]
    api = world.client("supervisor").get(f"/api/v1/recordings/{rid}").json()
    assert api["paused"] == expected
    timeline = world.client("supervisor").get(f"/calls/{call_id}").text
    assert timeline.count("recording.paused") == 4 and timeline.count("recording.resumed") == 2
    other = world.recordings["bob"]  # paused nothing: nothing marked, nothing listed
    page = world.client("supervisor").get(f"/recordings/{other}").text
    assert 'id="player-paused">[]</script>' in page and 'class="paused"' not in page


def test_api_searches_recordings_with_the_same_visibility(world: World) -> None:
    extra = [add_call(world.rig, "alice", campaign="service", seconds=0.05)[1] for _ in range(3)]
    world.services.custody.delete(extra[0], actor="dora", reason="r")
    c = world.client("supervisor")
    everything = c.get("/api/v1/recordings").json()["recordings"]
    assert {r["id"] for r in everything} == {*world.recordings.values(), *extra}
    live = c.get("/api/v1/recordings?campaign=service&state=encrypted").json()["recordings"]
    assert {r["id"] for r in live} == set(extra[1:]) and live[0]["campaign"] == "service"
    first = c.get("/api/v1/recordings?limit=2").json()
    rest = c.get(f"/api/v1/recordings?limit=2&after={first['next']}").json()["recordings"]
    assert len({r["id"] for r in first["recordings"] + rest}) == 4
    mine = world.client("bob").get("/api/v1/recordings").json()["recordings"]
    assert [r["id"] for r in mine] == [world.recordings["bob"]]
    assert c.get("/api/v1/recordings?state=lost").status_code == 400
