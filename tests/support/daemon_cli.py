"""The ``callconsent`` command and its work directory as the demo and the benchmarks use them:
as root, every command runs as the daemon's account (``callconsent``), as in production, in a
directory that account owns."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path


def daemon_user(who: str) -> pwd.struct_passwd | None:
    """The account to run as: ``callconsent`` under root, ourselves otherwise. ``who`` names the
    caller in the message that stops a root run on a host without the account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("callconsent")
    except KeyError:
        sys.exit(f"{who}: running as root needs the 'callconsent' account (make run creates it)")


def run(
    who: str, cfg: Path, passphrase: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """One CLI command with the key store's passphrase in its environment."""
    user = daemon_user(who)
    return subprocess.run(
        [sys.executable, "-m", "callconsent", "--config", str(cfg), *args],
        cwd=cfg.parent,
        env={**os.environ, "CALLCONSENT_KEY_PASSPHRASE": passphrase},
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        check=check,
    )


def workdir(who: str) -> Path:
    """A fresh directory (under /tmp, 0755) owned by the account the commands run as."""
    base = Path(tempfile.mkdtemp(prefix=f"callconsent-{who}-"))
    base.chmod(0o755)
    user = daemon_user(who)
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    return base
