"""Is a PBX's recording file closed? Both PBXs write a WAV's header sizes only when they close
the file (Asterisk 1–15 ms after the channel hangs up or ``StopMixMonitor`` returns, with no
event saying so; FreeSWITCH before RECORD_STOP), so a file whose RIFF and data sizes match its
size is final. A ``.raw`` file has no header: it is taken as closed once its size is stable.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

from recorder.live.port import RecordingFile


def header_final(path: Path) -> bool:
    """True when the WAV at ``path`` has a header whose sizes match the file: closed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4096)
    if size < 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    if struct.unpack_from("<I", head, 4)[0] != size - 8:
        return False
    offset = 12
    while offset + 8 <= len(head):
        chunk, length = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"data":
            return length == size - offset - 8
        offset += 8 + length + (length & 1)
    return False


async def wait_closed(file: RecordingFile, wait_s: float) -> bool:
    """Poll until the file is final (WAV) or stable (raw), for at most ``wait_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay, last_size = 0.002, -1
    while True:
        if file.fmt == "wav":
            if header_final(file.path):
                return True
        else:
            try:
                size = file.path.stat().st_size
            except OSError:
                size = -1
            if size >= 0 and size == last_size:
                return True
            last_size = size
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
