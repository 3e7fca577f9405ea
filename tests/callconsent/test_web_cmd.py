"""`callconsent web`: the key store unlocked at start from [web] or a systemd credential (or
not, and why), and the server answering on its port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_host import Host, free_port
from recstore import PASSPHRASE, make_keys

from callconsent import config as cfgmod
from callconsent.app import App
from callconsent.commands.web_cmd import key_secret, services_of


def with_web(config_file: Path, text: str) -> cfgmod.Config:
    config_file.write_text(config_file.read_text() + "\n[web]\n" + text)
    return cfgmod.load(config_file)


def test_without_a_secret_there_is_no_audio_and_the_reason(
    app: App, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    make_keys(app)
    services = services_of(App.open(cfgmod.load(config_file)))
    assert (
        services.keys is None
        and "no key file, passphrase file or systemd credential" in services.keys_problem
    )


def test_a_passphrase_file_unlocks_the_keys(
    app: App, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    keys = make_keys(app)
    secret = tmp_path / "pass"
    secret.write_bytes(PASSPHRASE + b"\n")
    os.chmod(secret, 0o644)
    cfg = with_web(config_file, f'passphrase_file = "{secret}"\n')
    assert key_secret(cfg)[0] is None and "cannot read" in key_secret(cfg)[1]  # too open
    os.chmod(secret, 0o600)
    services = services_of(App.open(cfg))
    assert services.keys is not None and services.keys_problem == ""
    epoch = keys.store.epochs()[0].id
    assert services.keys.private_key(epoch) == keys.private_key(epoch)
    secret.write_bytes(b"wrong passphrase")
    assert "could not be unlocked" in services_of(App.open(cfg)).keys_problem


def test_the_systemd_credential_comes_first(
    app: App, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_keys(app)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "callconsent-keys").write_bytes(PASSPHRASE)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = with_web(config_file, 'passphrase_file = "/nonexistent"\n')
    assert services_of(App.open(cfg)).keys is not None


def test_callconsent_web_serves_on_its_port() -> None:
    # a host whose state the daemon's account can reach: started as root, `users` and `web`
    # act as that account (cli_host)
    host = Host("web-port")
    port = free_port()
    env = {**os.environ, "CALLCONSENT_USER_PASSWORD": "a long password"}
    env.pop("CREDENTIALS_DIRECTORY", None)
    exe = [sys.executable, "-m", "callconsent", "--config", str(host.config)]
    subprocess.run([*exe, "users", "add", "admin", "--role", "admin"], env=env, check=True,
                   cwd=host.dir)  # fmt: skip
    server = subprocess.Popen(
        [*exe, "web", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True,
        cwd=host.dir,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and server.poll() is None, (
                    "callconsent web did not start"
                )
                time.sleep(0.2)
        assert page.status == 200 and b'name="password"' in page.read()
        assert page.headers["X-Frame-Options"] == "DENY"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=10)
        host.remove()
    assert "event=web_starting" in err and "event=web_without_keys" in err
    assert "malloc_arenas=2" in err  # callconsent/heap.py: limit_arenas, before any thread
    assert "route=/login status=200" in err and "HTTP/1.1" not in err  # our line, no access log
