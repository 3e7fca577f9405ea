"""The account a test's daemon (or CLI) switches to when the suite runs as root: the real one,
``callconsent``, which ``make test`` creates and lets reach the checkout (callconsent.devaccess);
``nobody`` where it does not exist (then a checkout below a 0700 directory stays out of reach)."""

from __future__ import annotations

import grp
import os
import pwd
import sys

ROOT = os.geteuid() == 0


def _pick() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("callconsent")
    except KeyError:
        return pwd.getpwnam("nobody")


ACCOUNT = _pick()
NAME = ACCOUNT.pw_name
GROUP = grp.getgrgid(ACCOUNT.pw_gid).gr_name
UID, GID = ACCOUNT.pw_uid, ACCOUNT.pw_gid


def interpreter_readable() -> bool:
    """Whether the account can run this interpreter (a pyenv build under /root it cannot)."""
    return not os.path.realpath(sys.executable).startswith("/root/")
