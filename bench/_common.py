"""What the load benchmarks share: a free loopback port, and a server started in its own
process (the benchmark script itself, with ``--serve KIND --port N``) that says READY."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> None:
    """Thousands of concurrent sessions need thousands of sockets on each side."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU time a process has used so far: system is the kernel's work for it
    (its system calls, and the scheduler's when it sleeps and wakes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mib(pid: int) -> float:
    """A process's resident memory now, in MiB (Linux /proc; NaN if it has none to show)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """While a round runs, the load generator makes no full (generation 2) collection of its
    own: one walks every object the generator holds (thousands of calls in progress) and
    took it 9-52 ms, during which it read nothing from the daemon, so the wait counted as
    the daemon's turnaround. The PBX it plays is C and never pauses so. Young collections
    still run (they free most of a call's cycles); what is left is collected after the round,
    outside what is measured."""
    gc.collect()
    gc.freeze()  # what the generator set up before the round: never walked again
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, 2**30)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, full)
        gc.unfreeze()
        gc.collect()


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
