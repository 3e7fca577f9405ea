"""`callconsent doctor`'s host checks, against fake AMI and ESL peers speaking the captured
bytes (banner, login replies, auth/request, +OK accepted / -ERR invalid)."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from recstore import make_keys

from callconsent import cli, doctor_host
from callconsent import config as cfgmod
from callconsent.app import App


def serve_once(script) -> Iterator[int]:  # type: ignore[no-untyped-def]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            script(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    srv.close()


def recv_until(conn: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def ami(request: pytest.FixtureRequest) -> Iterator[int]:
    accept = request.param

    def script(conn: socket.socket) -> None:
        conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
        login = recv_until(conn, b"\r\n\r\n")
        ok = accept and b"Secret: good" in login
        conn.sendall(
            b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
            if ok
            else b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
        )
        recv_until(conn, b"\r\n\r\n")

    yield from serve_once(script)


SHIPPED_USER = (
    Path(__file__).resolve().parents[2] / "dialplan" / "freeswitch" / "callconsent-esl-user.xml"
)


def shipped_rights() -> bytes:
    """The Allowed-* headers FreeSWITCH sends the shipped user (the form of capture s5b)."""
    text = SHIPPED_USER.read_text()
    api = re.search(r'name="esl-allowed-api" value="([^"]+)"', text)
    events = re.search(r'name="esl-allowed-events" value="([^"]+)"', text)
    assert api and events
    return f"Allowed-Events: {events[1]}\nAllowed-API: {api[1]}\nAllowed-LOG: false\n".encode()


@pytest.fixture
def esl(request: pytest.FixtureRequest) -> Iterator[int]:
    accept = request.param  # True, False, or the Allowed-* headers to send

    def script(conn: socket.socket) -> None:
        conn.sendall(b"Content-Type: auth/request\n\n")
        auth = recv_until(conn, b"\n\n")
        ok = accept is not False and auth == b"userauth callconsent@default:good\n\n"
        reply = b"+OK accepted" if ok else b"-ERR invalid"
        rights = accept if isinstance(accept, bytes) else b""
        conn.sendall(b"Content-Type: command/reply\nReply-Text: " + reply + b"\n" + rights + b"\n")

    yield from serve_once(script)


@pytest.fixture
def esl_db(request: pytest.FixtureRequest) -> Iterator[int]:
    """The shipped user, logged in; then the answer real FreeSWITCH 1.10.12 gives to
    ``api db select/…`` for a missing key with mod_db loaded, or with mod_db unloaded."""
    body, rights = request.param if isinstance(request.param, tuple) else (request.param, None)
    probes: list[bytes] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(b"Content-Type: auth/request\n\n")
        recv_until(conn, b"\n\n")
        conn.sendall(
            b"Content-Type: command/reply\nReply-Text: +OK accepted\n"
            + (rights or shipped_rights())
            + b"\n"
        )
        probes.append(recv_until(conn, b"\n\n"))
        conn.sendall(f"Content-Type: api/response\nContent-Length: {len(body)}\n\n".encode() + body)
        recv_until(conn, b"\n\n")  # exit

    yield from serve_once(script)
    assert probes and probes[0].startswith(b"api db select/callconsent_withdrawn/")


def cfg_with(tmp_path: Path, extra: str) -> cfgmod.Config:
    path = tmp_path / "doctor.toml"
    path.write_text(f'[daemon]\ndata_dir = "data"\n{extra}')
    return cfgmod.load(path)


def esl_cfg(tmp_path: Path, port: int) -> cfgmod.Config:
    """FreeSWITCH on ``port``, with the credential the fake peers accept."""
    return cfg_with(
        tmp_path,
        f"[freeswitch]\nenabled = true\nesl_port = {port}\n"
        'esl_user = "callconsent@default"\nesl_password = "good"\n',
    )


@pytest.mark.parametrize(
    ("ami", "secret", "level"), [(True, "good", "ok"), (False, "bad", "error")], indirect=["ami"]
)
def test_ami_login_is_checked(ami: int, secret: str, level: str, tmp_path: Path) -> None:
    cfg = cfg_with(
        tmp_path,
        f'[asterisk]\nenabled = true\nami_port = {ami}\nami_user = "cc"\nami_secret = "{secret}"\n',
    )
    (finding,) = doctor_host.pbx(cfg)
    assert (finding.check, finding.level) == ("ami", level)


@pytest.mark.parametrize(("esl", "level"), [(True, "ok"), (False, "error")], indirect=["esl"])
def test_esl_credential_is_checked(esl: int, level: str, tmp_path: Path) -> None:
    cfg = esl_cfg(tmp_path, esl)
    (finding,) = doctor_host.pbx(cfg)
    assert (finding.check, finding.level) == ("esl", level)


def test_an_unreachable_pbx_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    cfg = cfg_with(tmp_path, f"[asterisk]\nenabled = true\nami_port = {port}\n")
    (finding,) = doctor_host.pbx(cfg)
    assert finding.level == "error" and "unreachable" in finding.message


def test_store_and_keys(app: App, config_file: Path) -> None:
    cfg = app.config
    levels = {f.check: f.level for f in doctor_host.store(cfg)}
    assert levels == {"database": "ok", "keys": "error"}  # no key store yet
    make_keys(app, weeks=60)
    assert {f.check: f.level for f in doctor_host.store(cfg)} == {"database": "ok", "keys": "ok"}
    os.chmod(cfg.key_dir, 0o755)
    keys = [f for f in doctor_host.store(cfg) if f.check == "keys"]
    assert keys[0].level == "error" and "chmod 700" in keys[0].message
    os.chmod(cfg.key_dir, 0o700)


def test_doctor_command_exits_1_and_says_what_to_fix(
    app: App, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(config_file), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "OK    database:" in out
    assert "ERROR keys: no key epochs" in out and "callconsent keys init" in out
    assert "WARN  daemon: not running" in out


@pytest.mark.parametrize(
    ("esl", "level", "named"),
    [
        (shipped_rights(), "ok", ""),
        (
            shipped_rights().replace(b",uuid_exists,uuid_getvar", b""),
            "warn",
            "uuid_exists, uuid_getvar",
        ),
        (
            b"Allowed-Events: RECORD_START,RECORD_STOP,CHANNEL_HANGUP_COMPLETE\n"
            b"Allowed-API: uuid_record,uuid_getvar\nAllowed-LOG: false\n",
            "warn",
            "CUSTOM",
        ),
    ],
    indirect=["esl"],
    ids=["shipped-user", "user-of-an-earlier-version", "capture-s5b"],
)
def test_the_esl_users_rights_are_checked(esl: int, level: str, named: str, tmp_path: Path) -> None:
    cfg = esl_cfg(tmp_path, esl)
    (finding,) = doctor_host.pbx(cfg)
    assert (finding.check, finding.level) == ("esl", level), finding
    assert named in finding.message


@pytest.mark.parametrize(
    ("esl_db", "level", "lacks"),
    [
        (b"-ERR no reply\n", "ok", ""),
        (b"-ERR db Command not found!\n", "warn", ""),
        (
            (b"-ERR db Command not found!\n", shipped_rights().replace(b"uuid_kill,", b"")),
            "warn",
            "uuid_kill",
        ),
    ],
    indirect=["esl_db"],
    ids=["mod_db-loaded", "no-mod_db", "no-mod_db-and-a-right-missing"],
)
def test_a_freeswitch_without_mod_db_is_named(
    esl_db: int, level: str, lacks: str, tmp_path: Path
) -> None:
    (finding,) = doctor_host.pbx(esl_cfg(tmp_path, esl_db))
    assert (finding.check, finding.level) == ("esl", level), finding
    assert ("mod_db" in finding.message) == (level == "warn")
    if lacks:  # what the user lacks is named beside it
        assert lacks in finding.message and "esl-allowed-api" in finding.hint


def test_the_shipped_esl_user_may_run_every_api_we_use() -> None:
    from esl_listener.inbound import API_USED

    rights = shipped_rights().decode()
    assert f"Allowed-API: {','.join(API_USED)}\n" in rights
