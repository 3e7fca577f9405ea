"""The daemon never runs as root: started as root, it switches to its own account first.

``serve`` and every command that creates or changes the daemon's state (``keys init``,
``prompts build``, ``db upgrade``, …) call :func:`act_as_daemon` when started as root, so what
they create belongs to the account that must use it. After the switch, :func:`check_reachable`
proves the account can read its own installation and reach its state; when it cannot, the error
names the account, the path and the directory that blocks it (not a later, misleading error
from alembic or SQLite).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path


class PrivilegeError(Exception):
    pass


# Who started a command that now acts as the daemon's account ("root", or the sudo user):
# the audit log and the actor checks keep naming that person, not the daemon's account.
_invoked_by: str | None = None


def invoked_by() -> str | None:
    return _invoked_by


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


def act_as_daemon(user: str, state: Iterable[Path], own: list[Path] | None = None) -> str:
    """Started as root: become ``user`` (see :func:`drop_root`), then check that it can read
    the installation and reach ``state`` (the config file, the data directory, …)."""
    global _invoked_by
    sudo = os.environ.get("SUDO_USER")
    invoker = sudo if sudo and sudo != "root" else pwd.getpwuid(os.geteuid()).pw_name
    who = drop_root(user, own or [])
    _invoked_by = invoker
    check_reachable(user, [*installation_paths(), *state])
    return who


def installation_paths() -> list[Path]:
    """What the running code reads after the switch: its packages (the migrations among them)
    and the directories its libraries are imported from."""
    import recorder.store.migrate as migrate

    paths = [Path(sysconfig.get_paths()["purelib"]), migrate.MIGRATIONS / "versions"]
    for name in ("callconsent", "recorder", "agi", "esl_listener", "consent_ivr"):
        module = sys.modules.get(name)
        if module is not None and module.__file__:
            paths.append(Path(module.__file__).parent)
    return paths


def check_reachable(user: str, paths: Iterable[Path]) -> None:
    """Raise :class:`PrivilegeError` naming the first path this process (running as ``user``)
    cannot read, and the directory that blocks it. A path that does not exist yet is checked
    as far as it exists (its creation reports its own error)."""
    for path in paths:
        problem = unreachable(Path(path))
        if problem:
            raise PrivilegeError(f"the account {user} cannot read {path}: {problem}")


def unreachable(path: Path) -> str | None:
    """Why this process cannot read ``path`` (None if it can): the blocking directory first."""
    path = Path(os.path.abspath(path))
    blocked = blocked_on_the_way(path)
    if blocked:
        return f"{blocked}; {fix_hint(blocked_dir(path) or path)}"
    if not os.path.lexists(path):
        return None
    want = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.access(path, want):
        return f"permission denied ({describe(path)})"
    return None


def blocked_dir(path: Path) -> Path | None:
    """The first existing directory above ``path`` this process cannot enter."""
    for parent in reversed(Path(os.path.abspath(path)).parents):
        if not os.access(parent, os.X_OK):
            return parent if os.path.exists(parent) else None  # else: created later
    return None


def blocked_on_the_way(path: Path) -> str | None:
    """``it cannot enter /root (mode 0700, owner root:root)``, or None."""
    parent = blocked_dir(path)
    return f"it cannot enter {parent} ({describe(parent)})" if parent else None


def describe(path: Path) -> str:
    """``mode 0700, owner root:root``, as ``ls -l`` would tell."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}:{group}"


def fix_hint(blocker: Path) -> str:
    return (
        "install callconsent where this account can read it (see deploy/README.md), "
        f"or, for a development checkout, run `make run` (it grants the account traversal "
        f"of {blocker} with an ACL)"
    )


def ask_as(account: str, question: Callable[[], str]) -> str:
    """Root only: ask ``question`` in a child process that runs as ``account`` (with its
    groups, so ACLs and group modes count as they will for it); returns its answer."""
    pw = pwd.getpwnam(account)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            os.setgroups(os.getgrouplist(account, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                answer = question()
            except Exception as exc:
                answer = f"could not be checked ({type(exc).__name__}: {exc})"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


def readable_by(path: Path, account: str, mode: int) -> str | None:
    """Give ``path`` ``mode`` and, for a mode closed to others (0640), the group of ``account``
    (the PBX's), so that account can read it. None when done, else why not (for a note)."""
    os.chmod(path, mode)
    if mode & 0o004:
        return None
    try:
        gid = pwd.getpwnam(account).pw_gid
    except KeyError:
        return f"no account {account!r} here: give {path} its group yourself (chgrp)"
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        return f"only root may give {path} the group of {account}: chgrp it yourself"
    return None
