"""The daemon never runs as root: started as root, it switches to its own account first."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path


class PrivilegeError(Exception):
    pass


def drop_root(user: str, own: list[Path]) -> str:
    """Switch the process to ``user`` (and its groups) for good. Directories in ``own`` that do
    not exist yet are created for that user first. Returns the user name."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"refusing to run as root, and the account {user!r} (daemon.user) does not exist: "
            f"create it (useradd --system --user-group --shell /usr/sbin/nologin {user}) "
            "or start callconsent as an unprivileged user"
        ) from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"daemon.user {user!r} is root; name an unprivileged account")
    for path in own:
        if not path.exists():
            path.mkdir(parents=True, mode=0o750)
            os.chown(path, pw.pw_uid, pw.pw_gid)
    groups = os.getgrouplist(user, pw.pw_gid)
    os.setgroups(groups)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to be broken
        raise PrivilegeError("could regain root after dropping privileges")
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user
    return f"{user} (groups {','.join(grp.getgrgid(g).gr_name for g in groups)})"
