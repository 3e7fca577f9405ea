"""The spool: the one directory the PBX writes recordings into and we read them from.

It is owned ``<pbx user>:callconsent`` with mode 2770 (setgid), so files the PBX creates
belong to our group and the daemon, never root, can read and unlink them. Names are our
recording UUIDs, never caller data. Start-up refuses a spool that others can reach.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from pathlib import Path

RECORDING_EXTENSIONS = ("wav", "raw")
_NAME = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(?P<ext>wav|raw)$"
)


class SpoolError(Exception):
    """The spool, or a file in it, is not what it must be."""


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()

    def ensure(self) -> None:
        """Create the spool 2770 if missing, then check it."""
        if not self.path.exists():
            self.path.mkdir(parents=True)
            os.chmod(self.path, 0o2770)  # noqa: S103 - group rw for the PBX, none for others
        self.check()

    def check(self) -> None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise SpoolError(f"spool {self.path} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"spool {self.path} is not a directory (a symlink is refused too)")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o007:
            raise SpoolError(
                f"spool {self.path} has mode {mode:04o}: other users can reach recordings; "
                f"fix it with: chmod 2770 {self.path}"
            )
        if not mode & stat.S_ISGID:
            raise SpoolError(
                f"spool {self.path} has mode {mode:04o} without setgid, so files the PBX writes "
                f"would not belong to our group; fix it with: chmod 2770 {self.path}"
            )

    def path_for(self, recording_id: str, ext: str = "wav") -> Path:
        """The absolute path the PBX is told to write; derived from our UUID only."""
        if ext not in RECORDING_EXTENSIONS:
            raise ValueError(f"recording extension must be one of {RECORDING_EXTENSIONS}")
        return self.path / f"{uuid.UUID(recording_id)}.{ext}"

    @staticmethod
    def parse_name(name: str) -> tuple[str, str] | None:
        """``(recording_id, ext)`` for a name we could have written, else ``None``."""
        m = _NAME.match(name)
        return (m["id"], m["ext"]) if m else None

    def open_recording(self, path: Path) -> int:
        """Open a spool file for reading: must be a regular file, directly in the spool,
        with one of our names, and not a symlink (``O_NOFOLLOW``). Returns the fd."""
        path = Path(path)
        if path.parent != self.path or self.parse_name(path.name) is None:
            raise SpoolError(f"{path} is not a recording file of spool {self.path}")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpoolError(f"{path} is not a regular file")
        return fd
