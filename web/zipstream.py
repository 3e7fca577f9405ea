"""A zip written as it is sent: :func:`zip_chunks` turns entries (a name, a size, the bytes
as an iterator) into the bytes of a zip file, piece by piece, with the standard library's
``zipfile`` writing into a sink it cannot seek (so it writes each entry's sizes and CRC after
its data, in a data descriptor). Nothing is held but the piece being sent, and nothing touches
the disk: the web console streams a subject export with it, whose WAVs are decrypted as they
go (:meth:`recorder.governance.subjects.PreparedExport.plaintext`)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Entry:
    name: str
    size: int  # known in advance: over 2 GiB, the entry is written as ZIP64
    data: Iterable[bytes]


class _Sink:
    """Where ``zipfile`` writes: pieces kept until taken. It has no ``tell``/``seek``, so
    ``zipfile`` treats it as a stream."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


def zip_chunks(entries: Iterable[Entry], when: datetime) -> Iterator[bytes]:
    """The zip of ``entries`` (stored, not compressed: WAVs and JSON are sent as they are),
    as it is written: at least one piece per piece of an entry's data. An error raised by an
    entry's data goes up and the zip stays unfinished (no central directory: no unzip tool
    takes it for whole)."""
    sink = _Sink()
    stamp = when.timetuple()[:6]
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as z:  # type: ignore[arg-type]
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=stamp)
            info.file_size = entry.size
            info.external_attr = 0o600 << 16
            with z.open(info, "w") as out:
                for piece in entry.data:
                    out.write(piece)
                    if data := sink.take():
                        yield data
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data
