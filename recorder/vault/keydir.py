"""The key directory: secrets and keys on disk, with the modes checked every time.

The directory must be 0700 and every file in it 0600, owned by us (root, running the CLI for
an admin, may use the daemon's keys); anything looser is refused rather than used, because a
key another account could read is a key that has leaked.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class KeyPermissionError(PermissionError):
    """A key file or the key directory is readable by someone else, or not ours."""


class KeyDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        """Create the directory 0700 if missing, then check it."""
        if not self.path.exists():
            self.path.mkdir(mode=0o700, parents=True)
        self.check_dir()

    def check_dir(self) -> None:
        st = os.stat(self.path, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise KeyPermissionError(f"key directory {self.path} is not a directory")
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            raise KeyPermissionError(
                f"key directory {self.path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})"
            )
        if st.st_mode & 0o077:
            raise KeyPermissionError(
                f"key directory {self.path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"fix it with: chmod 700 {self.path}"
            )

    def check_file(self, path: Path) -> None:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise KeyPermissionError(f"key file {path} is not a regular file")
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            raise KeyPermissionError(f"key file {path} belongs to uid {st.st_uid}, not to us")
        if st.st_mode & 0o077:
            raise KeyPermissionError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"fix it with: chmod 600 {path}"
            )

    def read(self, name: str) -> bytes:
        self.check_dir()
        path = self.path / name
        self.check_file(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write_new(self, name: str, data: bytes) -> Path:
        """Write a new file 0600 atomically (temp file, fsync, rename); never overwrite."""
        self.check_dir()
        path = self.path / name
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite a key")
        tmp = self.path / f".{name}.tmp-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                if os.geteuid() == 0:  # root (an admin's CLI) writes for the daemon's account
                    owner = os.stat(self.path)
                    os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
            os.link(tmp, path)  # fails if a concurrent writer got there first
        finally:
            os.unlink(tmp)
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret, created on first use."""
        path = self.path / name
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # a concurrent process created it
                self.write_new(name, secrets.token_bytes(size))
        data = self.read(name)
        if len(data) != size:
            raise ValueError(f"{path} holds {len(data)} bytes, expected {size}: it is damaged")
        return data
