"""The realpbx tests run against a PBX under its own unprivileged account, as in production
(issue 14, point 7): a PBX running as root reads and writes anything, which hides every file
the admin must hand to the PBX's account (spool, prompts, rendered dialplan).

:func:`require_unprivileged` finds the process listening on the PBX's management port (AMI or
ESL) through ``/proc/net/tcp`` and reads its ``Uid``/``Gid``/``Groups`` from
``/proc/<pid>/status``; a PBX running as root fails the test with the command to run it as
its own account. :func:`pbx_dir` makes a directory that account can write (and read), the way
an admin hands the spool and prompts to it: mode 2770, group one the PBX's account has.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the group the deployed layout shares between the daemon and the PBX (deploy/README.md)
SHARED_GROUP = "callconsent"
HOW = {
    "asterisk": "/usr/sbin/asterisk -U asterisk",
    "freeswitch": "freeswitch -u freeswitch -nc -nonat",
}


@dataclass(frozen=True)
class PbxAccount:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @property
    def shared_gid(self) -> int:
        """The group to hand files to: ``callconsent`` if the PBX is in it, else its own."""
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(SHARED_GROUP).gr_gid
            if gid in self.groups or gid == self.gid:
                return gid
        return self.gid


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def listener_pid(port: int) -> int | None:
    """The process with a socket listening on 127.0.0.1/any ``port`` (None if not found)."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not wanted:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in wanted:
                        return int(entry.name)
    return None


def account_of(pid: int) -> PbxAccount:
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(x) for x in value.split()]
    # Uid/Gid: real, effective, saved, filesystem; the effective one is what file access uses
    return PbxAccount(pid, fields["Uid"][1], fields["Gid"][1], tuple(fields.get("Groups", [])))


def require_unprivileged(port: int, pbx: str) -> PbxAccount:
    """The account of the ``pbx`` listening on ``port``; fails the test if it runs as root."""
    pid = listener_pid(port)
    if pid is None:
        pytest.fail(
            f"no process of this host listens on port {port}: the realpbx tests need the "
            f"{pbx} on this machine, to check it runs as its own account"
        )
    account = account_of(pid)
    if account.uid == 0:
        pytest.fail(
            f"{pbx} (pid {pid}) runs as root: run it as its own account "
            f"(`{HOW.get(pbx, pbx)}`), as in production, or these tests hide every file "
            "its account cannot reach"
        )
    return account


@contextlib.contextmanager
def pbx_dir(account: PbxAccount, name: str, base: Path | None = None) -> Iterator[Path]:
    """A fresh directory ``account`` can write and read (2770, its shared group), under
    ``base`` (default: /var/tmp, which every account may traverse); removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix=f"cct-{name}-", dir=base or "/var/tmp"))
    os.chown(parent, -1, account.shared_gid)
    os.chmod(parent, 0o2770)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def hand_over(path: Path, account: PbxAccount) -> None:
    """Files written as root under ``path`` made readable to ``account``'s group (what
    ``chgrp -R`` does for an admin)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            p = os.path.join(root, name)
            os.chown(p, -1, account.shared_gid)
            os.chmod(p, 0o2770 if os.path.isdir(p) else 0o640)
