"""``python -m callconsent.devaccess ACCOUNT DIR``: let the daemon's account reach a checkout.

For development only (``make run`` and ``make test`` call it as root). A checkout under
``/root`` or in a ``mktemp -d`` directory sits below a 0700 directory: the daemon, once it has
switched to its account, could neither import its code nor open ``./var/``. Rather than copy
the code elsewhere (a second copy that goes stale while you edit) this grants ACCOUNT the
narrowest right that fixes it: traversal (``x``, not listing) of each directory above DIR that
blocks it, with a POSIX ACL, and says so. Undo with ``setfacl -x u:ACCOUNT DIR``. A checkout
that is itself closed to others (a strict umask) also gets reading for ACCOUNT, within it.
A production install (``deploy/README.md``) never needs this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from callconsent.privileges import ask_as, unreachable


def first_blocker(account: str, path: Path) -> Path | None:
    """The first directory above ``path`` that ``account`` cannot enter (checked as it)."""

    def ask() -> str:
        return next((str(p) for p in reversed(path.parents) if not os.access(p, os.X_OK)), "")

    found = ask_as(account, ask)
    return Path(found) if found else None


def grant(account: str, path: Path) -> list[Path]:
    """Grant ``account`` traversal of every directory above ``path`` that blocks it."""
    granted: list[Path] = []
    while (blocker := first_blocker(account, path)) is not None:
        if blocker in granted:
            raise SystemExit(f"!!! granting {account} traversal of {blocker} did not help")
        setfacl = shutil.which("setfacl")
        if setfacl is None:
            raise SystemExit("!!! setfacl is missing: apt-get install acl")
        subprocess.run([setfacl, "-m", f"u:{account}:x", str(blocker)], check=True)  # noqa: S603
        print(
            f">>> {blocker} is closed to the daemon's account {account}: granted it traversal "
            f"only (ACL u:{account}:x; undo: setfacl -x u:{account} {blocker})"
        )
        granted.append(blocker)
    return granted


def grant_reading(account: str, directory: Path) -> None:
    """A checkout made under a strict umask (0027, 0077) is closed to the account even when it
    can reach it: grant it reading (``r``, and ``x`` on directories) of the checkout itself,
    inherited by what is created there later (a default ACL)."""
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        raise SystemExit("!!! setfacl is missing: apt-get install acl")
    rights = f"u:{account}:rX,d:u:{account}:rX"
    subprocess.run([setfacl, "-R", "-m", rights, str(directory)], check=True)  # noqa: S603
    print(
        f">>> {directory} is not readable by the daemon's account {account} (a strict umask): "
        f"granted it reading (ACL {rights}; undo: setfacl -R -x u:{account},d:u:{account} "
        f"{directory})"
    )


def _unreadable_part(directory: Path) -> str:
    """As the account: the first file or directory of the checkout it cannot read."""
    for probe in (directory / "setup.cfg", directory / ".venv", directory / "recorder"):
        why = unreachable(probe)
        if why:
            return why
    return ""


def main(argv: list[str]) -> int:
    account, directory = argv[0], Path(argv[1]).absolute()
    if os.geteuid() != 0:
        return 0  # the daemon does not switch accounts then: nothing to grant
    grant(account, directory)
    if ask_as(account, lambda: _unreadable_part(directory)):
        grant_reading(account, directory)
    problem = ask_as(account, lambda: _unreadable_part(directory))
    if problem:
        print(f"!!! the daemon's account {account} cannot read this checkout: {problem}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
