"""What the load benchmarks share: a free loopback port, and a server started in its own
process (the benchmark script itself, with ``--serve KIND --port N``) that says READY."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> None:
    """Thousands of concurrent sessions need thousands of sockets on each side."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect_loopback(port: int, protocol: asyncio.BaseProtocol) -> bool:
    """Open one client connection to 127.0.0.1:port for ``protocol``; False if refused.

    connect() to loopback completes in the kernel at once (our servers listen with a 4,096
    backlog): asyncio's non-blocking connect would cost the generator a writer registration
    and an extra loop turn per call, on the cores the servers share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        await asyncio.get_running_loop().create_connection(lambda: protocol, sock=sock)
    except OSError:
        sock.close()
        return False
    return True


def start_server(
    script: str, kind: str, port: int, python: str = sys.executable
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [python, script, "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return proc
