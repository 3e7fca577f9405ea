"""The vault: the directory of encrypted recordings (``<id>.ccrec``), written atomically and
read back only after every segment authenticates.

Writing: a temp file (``.writing/.<id>.<random>.tmp``, never a name a reader takes for a
recording), fsync, rename into the vault, fsync the vault. A crash leaves either no file, a temp
file (removed by reconciliation), or the whole file. The temp files have a directory of their
own because reconciliation looks for dead writers' files every minute: listing the vault
itself, which holds every recording kept, made each pass cost time and transient memory in
proportion to the recordings kept (a daemon's RSS crept up with them: docs/reliability.md).

Reading for a person (``recordings decrypt``) goes to a temp file beside the output that is
renamed only after the last tag verified, so a tampered file yields no output at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from recorder.vault import envelope
from recorder.vault import fileformat as ff

Writer = Callable[[int, bytes], int]  # os.write, or a test's disk that fills up
Step = Callable[[str], None]  # called at each named step (the crash tests stop there)


def _no_step(_name: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Sealed:
    path: Path
    plaintext_size: int
    plaintext_sha256: str
    ciphertext_size: int
    ciphertext_sha256: str


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(write: Writer, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]


# In every vault: where it is missing (a network share not mounted), a file that cannot be
# found proves nothing, and retention does not call it purged (recorder.governance.retention).
MARKER = ".callconsent-vault"
#: where ``seal`` writes before the rename; a subdirectory, so the rename stays on one file system
TEMP_DIR = ".writing"


class Vault:
    def __init__(self, path: Path, *, write: Writer = os.write) -> None:
        self.path = Path(path).absolute()
        self.temp_path = self.path / TEMP_DIR
        self._write = write

    def ensure(self) -> None:
        self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        st = os.stat(self.path, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o007:
            raise PermissionError(
                f"vault {self.path} must be a directory others cannot reach: chmod 750 {self.path}"
            )
        marker = self.path / MARKER
        if not marker.exists():
            marker.write_text("callconsent vault: a purge trusts a missing file only here\n")
        self.temp_path.mkdir(mode=0o750, exist_ok=True)

    def path_for(self, recording_id: str) -> Path:
        return self.path / f"{recording_id}{ff.SUFFIX}"

    def seal(
        self,
        recording_id: str,
        chunks: Iterable[bytes],
        data_key: bytes,
        slots: list[ff.KeySlot],
        step: Step = _no_step,
    ) -> Sealed:
        """Encrypt ``chunks`` (the plaintext WAV) into the vault; return sizes and hashes.
        Raises the writer's OSError (ENOSPC: disk full) after removing the temp file."""
        header = ff.Header(recording_id, os.urandom(ff.NONCE_PREFIX_SIZE))
        enc = ff.StreamEncryptor(data_key, header, slots)
        tmp = self.temp_path / f".{recording_id}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o640)
        except FileNotFoundError:  # a vault ensure() has not seen since it had a temp directory
            self.temp_path.mkdir(mode=0o750, exist_ok=True)
            fd = os.open(tmp, flags, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # reconciliation leaves a temp file alone while held
            pt_hash, ct_hash, pt_size = hashlib.sha256(), hashlib.sha256(enc.header), 0
            _write_all(self._write, fd, enc.header + enc.slot_area)
            first = True
            for chunk in chunks:
                pt_hash.update(chunk)
                pt_size += len(chunk)
                out = enc.update(chunk)
                ct_hash.update(out)
                _write_all(self._write, fd, out)
                if first and out:
                    step("mid_encrypt")
                    first = False
            out = enc.finalize()
            ct_hash.update(out)
            _write_all(self._write, fd, out)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        step("encrypted")
        final = self.path_for(recording_id)
        os.rename(tmp, final)
        fsync_dir(self.path)
        return Sealed(final, pt_size, pt_hash.hexdigest(), size, ct_hash.hexdigest())

    def remove(self, recording_id: str) -> bool:
        try:
            self.path_for(recording_id).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.path)
        return True

    def temp_files(self) -> list[Path]:
        """Temp files of writers, live or dead (``unused_temp`` tells them apart), in the temp
        directory, which holds the writes in progress. Versions before it wrote them into the
        vault itself: :meth:`listing` has those (the start-up reconcile)."""
        return [p for p in self.temp_path.glob(".*.tmp") if p.is_file()]

    def listing(self) -> tuple[set[str], list[Path]]:
        """The recordings in the vault (their ids) and the temp files in the vault itself,
        in one pass over the directory. It holds every recording kept: ``glob`` and
        ``is_file`` cost a ``stat`` per file on top of reading the directory, twice when the
        start-up reconcile asked for both (300,000 files: 2.8 s against 0.6 s with a cold
        cache, docs/performance.md, stop 27). ``is_file`` follows a symlink, as before."""
        ids: set[str] = set()
        temps: list[Path] = []
        with os.scandir(self.path) as entries:
            for e in entries:
                name = e.name
                if name.startswith("."):
                    if name.endswith(".tmp") and e.is_file():
                        temps.append(Path(e.path))
                elif name.endswith(ff.SUFFIX) and e.is_file():
                    ids.add(name[: -len(ff.SUFFIX)])
        return ids, temps


def unused_temp(path: Path) -> bool:
    """A temp file no live writer holds (writers keep theirs flocked until renamed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def open_ciphertext(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "rb")


def data_key(f: BinaryIO, recording_id: str, private_key_for: Callable[[str], bytes]) -> bytes:
    """Open the first key slot whose epoch's private key we have."""
    header = ff.read_header(f)
    if header.recording_id != recording_id:
        raise ff.TamperedError(
            f"the file belongs to recording {header.recording_id}, not {recording_id}"
        )
    problems = []
    for slot in ff.read_slots(f):
        try:
            return envelope.unwrap(slot, private_key_for(slot.epoch), recording_id)
        except Exception as exc:  # try the next slot (a hold key, another epoch)
            problems.append(f"{slot.epoch}: {exc}")
    raise envelope.EnvelopeError("no key slot could be opened: " + "; ".join(problems or ["none"]))


def decrypt_to(
    path: Path,
    recording_id: str,
    private_key_for: Callable[[str], bytes],
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Write the plaintext to ``out`` (0600) only if every segment authenticates; returns
    (size, SHA-256). On any failure no file is left at ``out``."""
    out = Path(out).absolute()
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.part"
    with open_ciphertext(path) as f:
        key = data_key(f, recording_id, private_key_for)
        header = ff.read_header(f)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            h, size = hashlib.sha256(), 0
            for seg in ff.decrypt_segments(f, key, header):
                _write_all(os.write, fd, seg)
                h.update(seg)
                size += len(seg)
                if progress:
                    progress(size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
    os.rename(tmp, out)
    return size, h.hexdigest()


def plaintext(
    path: Path, recording_id: str, private_key_for: Callable[[str], bytes]
) -> Iterator[bytes]:
    """The plaintext segment by segment, each authenticated before it is given, for a caller
    that streams it on (never to disk). Untrusted until the iterator ends without an error:
    only the last segment proves nothing was cut off."""
    with open_ciphertext(path) as f:
        key = data_key(f, recording_id, private_key_for)
        yield from ff.decrypt_segments(f, key, ff.read_header(f))


def authenticate(
    path: Path, recording_id: str, private_key_for: Callable[[str], bytes]
) -> tuple[int, str, int, str]:
    """Decrypt without writing anything: (plaintext size, plaintext SHA-256, ciphertext size,
    ciphertext SHA-256). Raises TamperedError / EnvelopeError."""
    with open_ciphertext(path) as f:
        key = data_key(f, recording_id, private_key_for)
        header = ff.read_header(f)
        h, size = hashlib.sha256(), 0
        for seg in ff.decrypt_segments(f, key, header):
            h.update(seg)
            size += len(seg)
        ct_size, ct_hash = ff.ciphertext_digest(f, header)
    return size, h.hexdigest(), ct_size, ct_hash
