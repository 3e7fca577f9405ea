"""The PBX as its own account (issue 14, point 6): `callconsent doctor` checks, as that
account, that it can write the spool, read the prompts and the rendered files; `dialplan
render` writes them so it can. The PBX's account here is ``nobody`` (unprivileged, no group
of ours), standing in for ``asterisk`` / ``freeswitch``."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from callconsent import config as config_mod
from callconsent.cli import main
from callconsent.doctor_layout import pbx_account_reach
from callconsent.privileges import ask_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="checks run as the PBX's account")
PBX = "nobody"
PBX_GID = pwd.getpwnam(PBX).pw_gid


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="callconsent-layout-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def write_config(base: Path, spool: Path, prompts: Path, pbx: str = "asterisk") -> Path:
    cfg = base / "callconsent.toml"
    cfg.write_text(
        f'[daemon]\ndata_dir = "{base / "data"}"\n[spool]\ndir = "{spool}"\n'
        f'[prompts]\ndir = "{prompts}"\n'
        f'[{pbx}]\nenabled = true\nconf_dir = "{base / "etc"}"\nos_user = "{PBX}"\n'
        + ('esl_password = "pw"\n' if pbx == "freeswitch" else "")
    )
    return cfg


def make_prompts(prompts: Path) -> None:
    (prompts / "en").mkdir(parents=True)
    (prompts / "en" / "consent.wav").write_bytes(b"RIFF")
    prompts.chmod(0o755)
    (prompts / "en").chmod(0o755)
    (prompts / "en" / "consent.wav").chmod(0o644)


def test_the_debian_layout_passes_as_the_pbx_account(base: Path) -> None:
    data = base / "data"
    data.mkdir(mode=0o750)  # the daemon's state: closed to the PBX
    spool, prompts = base / "spool", base / "prompts"
    spool.mkdir()
    os.chown(spool, pwd.getpwnam(PBX).pw_uid, 0)
    spool.chmod(0o2770)
    make_prompts(prompts)
    cfg = config_mod.load(write_config(base, spool, prompts))
    assert main(["--config", str(cfg.source), "dialplan", "render", "asterisk",
                 "--out", str(base / "etc")]) == 0  # fmt: skip
    (base / "etc").chmod(0o755)
    findings = pbx_account_reach(cfg)
    assert [(f.level, f.message) for f in findings] == [
        ("ok", f"{PBX} can write the spool, read the prompts and the rendered files")
    ]


def test_the_old_layout_inside_the_data_dir_is_named_piece_by_piece(base: Path) -> None:
    data = base / "data"
    data.mkdir(mode=0o750)
    spool, prompts = data / "spool", data / "prompts"
    spool.mkdir()
    spool.chmod(0o2770)
    make_prompts(prompts)
    etc = base / "etc"
    etc.mkdir()
    etc.chmod(0o755)
    (etc / "extensions_callconsent.conf").write_text("; ours\n")
    (etc / "extensions_callconsent.conf").chmod(0o640)  # root:root, as before the fix
    cfg = config_mod.load(write_config(base, spool, prompts))
    closed = f"it cannot enter {data} (mode 0750, owner root:root)"
    messages = [f.message for f in pbx_account_reach(cfg) if f.level == "error"]
    assert messages == [
        f"{PBX} cannot write the spool {spool}: {closed}",
        f"{PBX} cannot read the prompts in {prompts}: {closed}",
        f"{PBX} cannot read {etc / 'extensions_callconsent.conf'}: permission denied (mode 0640, "
        "owner root:root)",
    ]


def test_a_spool_the_pbx_can_enter_but_not_write_is_an_error(base: Path) -> None:
    spool, prompts = base / "spool", base / "prompts"
    spool.mkdir()
    spool.chmod(0o755)  # root's: the PBX may enter, not write
    make_prompts(prompts)
    cfg = config_mod.load(write_config(base, spool, prompts))
    (errors,) = [f for f in pbx_account_reach(cfg) if f.level == "error"]
    assert errors.message == (
        f"{PBX} cannot write the spool {spool}: it cannot write there (mode 0755, owner root:root)"
    )
    assert f"install -d -o {PBX} -g callconsent -m 2770 {spool}" in errors.hint


def test_render_freeswitch_writes_files_its_account_can_read(base: Path) -> None:
    spool, prompts = base / "spool", base / "prompts"
    cfg = write_config(base, spool, prompts, pbx="freeswitch")
    out = base / "etc" / "dialplan"
    old = os.umask(0o077)  # an admin's strict umask must not make them unreadable
    try:
        assert (
            main(["--config", str(cfg), "dialplan", "render", "freeswitch", "--out", str(out)]) == 0
        )
    finally:
        os.umask(old)
    for parent in (base / "etc", out):
        parent.chmod(0o755)
    dialplan, user = out / "callconsent.xml", out / "callconsent-esl-user.xml"
    assert dialplan.stat().st_mode & 0o777 == 0o644
    assert (user.stat().st_mode & 0o777, user.stat().st_gid) == (0o640, PBX_GID)  # the password
    assert ask_as(PBX, lambda: dialplan.read_text()[:4] + user.read_text()[:4]) == "<!--<!--"
    assert (
        f"Rendered by `callconsent dialplan render freeswitch` from {cfg}." in dialplan.read_text()
    )


def test_render_asterisk_gives_the_manager_file_the_pbx_group(base: Path) -> None:
    cfg = write_config(base, base / "spool", base / "prompts")
    out = base / "etc"
    assert main(["--config", str(cfg), "dialplan", "render", "asterisk", "--out", str(out)]) == 0
    manager = out / "manager_callconsent.conf"
    assert (manager.stat().st_mode & 0o777, manager.stat().st_gid) == (0o640, PBX_GID)
    assert grp.getgrgid(PBX_GID).gr_name != "root"
