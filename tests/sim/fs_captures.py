"""The captured FreeSWITCH 1.10.12 sessions (``tests/fixtures/freeswitch``), as byte steps.

Two capture formats exist (see ``tests/fixtures/freeswitch/README.md``):

* ``outbound/<scenario>.full`` holds every frame FreeSWITCH sent, each introduced by ``=== ``
  (not on the wire) and followed by one newline (not on the wire either); what the client sent
  is in ``<scenario>.log`` as Python ``repr`` strings (``>>> 'connect\\n\\n'``), in order with
  one-line summaries of the received frames. Merging the two gives the exact exchange.
* ``bridge/<scenario>/<connection>.full`` interleaves ``>>> [t] sent N bytes:`` (N exact bytes)
  and ``=== [t] <<< received`` (one frame, then one newline).

``inbound-run*.log`` have no ``.full``: their replies (auth, api, exit) are short enough that
the summary line holds every byte (headers joined by `` | ``, ``|| BODY 'repr'``); events are
summaries only and are skipped.
"""

from __future__ import annotations

import ast
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "freeswitch"
_LOG_TX = re.compile(r"^\[\s*[\d.]+\] >>> (?P<repr>['\"].*['\"])$")
_LOG_RX = re.compile(
    r"^\[\s*[\d.]+\] <<< (?P<kind>FRAME|EVENT(\(\w+\))?|DISCONNECT-NOTICE) (?P<rest>.*)$"
)
_BRIDGE_MARK = re.compile(
    rb"^(>>> \[\s*[\d.]+\] sent (\d+) bytes:|=== \[\s*[\d.]+\] <<< received.*)$", re.M
)


@dataclass(frozen=True, slots=True)
class Step:
    direction: str  # "tx": the client sent it; "rx": FreeSWITCH sent it
    data: bytes


@dataclass(frozen=True, slots=True)
class Capture:
    name: str
    steps: tuple[Step, ...]

    @property
    def rx(self) -> bytes:
        return b"".join(s.data for s in self.steps if s.direction == "rx")

    @property
    def tx(self) -> list[bytes]:
        return [s.data for s in self.steps if s.direction == "tx"]

    @property
    def is_inbound(self) -> bool:
        """An inbound ESL connection (FreeSWITCH greets with auth/request)."""
        first = next(s for s in self.steps)
        return first.direction == "rx" and first.data.startswith(b"Content-Type: auth/request")


def _read(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def outbound_names() -> list[str]:
    return sorted(p.name[: -len(".full.gz")] for p in (FIXTURES / "outbound").glob("*.full.gz"))


def bridge_names() -> list[str]:
    return sorted(
        f"{p.parent.name}/{p.name[: -len('.full.gz')]}"
        for p in (FIXTURES / "bridge").glob("*/*.full.gz")
    )


def inbound_log_names() -> list[str]:
    return sorted(
        p.name[: -len(".log.gz")] for p in (FIXTURES / "outbound").glob("inbound-*.log.gz")
    )


def load_outbound(name: str) -> Capture:
    """Merge ``<name>.full`` (received frames) with the sends recorded in ``<name>.log``."""
    full = _read(FIXTURES / "outbound" / f"{name}.full.gz")
    assert full.startswith(b"=== "), name
    frames = full[4:].split(b"\n=== ")
    frames[-1] = frames[-1].removesuffix(b"\n")
    log = _read(FIXTURES / "outbound" / f"{name}.log.gz").decode()
    steps: list[Step] = []
    queue = list(frames)
    for line in log.splitlines():
        if m := _LOG_TX.match(line):
            steps.append(Step("tx", ast.literal_eval(m["repr"]).encode()))
        elif _LOG_RX.match(line):
            steps.append(Step("rx", queue.pop(0)))
    assert not queue, f"{name}: {len(queue)} frames not announced in the log"
    return Capture(f"outbound/{name}", tuple(steps))


def load_bridge(name: str) -> Capture:
    data = _read(FIXTURES / "bridge" / f"{name}.full.gz")
    marks = list(_BRIDGE_MARK.finditer(data))
    steps: list[Step] = []
    for i, m in enumerate(marks):
        start = m.end() + 1
        if m[2] is not None:
            steps.append(Step("tx", data[start : start + int(m[2])]))
            continue
        end = marks[i + 1].start() if i + 1 < len(marks) else len(data)
        chunk = data[start:end]
        steps.append(Step("rx", chunk[:-1] if chunk.endswith(b"\n") else chunk))
    return Capture(f"bridge/{name}", tuple(steps))


def load_inbound_log(name: str) -> Capture:
    """The exact replies of an inbound-run log (events skipped: they are summaries)."""
    log = _read(FIXTURES / "outbound" / f"{name}.log.gz").decode()
    steps: list[Step] = []
    for line in log.splitlines():
        if m := _LOG_TX.match(line):
            steps.append(Step("tx", ast.literal_eval(m["repr"]).encode()))
        elif (m := _LOG_RX.match(line)) and not m["kind"].startswith("EVENT"):
            head, _, body = m["rest"].partition(" || BODY ")
            block = "\n".join(head.split(" | ")) + "\n\n"
            steps.append(Step("rx", (block + (ast.literal_eval(body) if body else "")).encode()))
    return Capture(f"inbound-log/{name}", tuple(steps))


def load(name: str) -> Capture:
    if name.startswith("inbound-"):
        return load_inbound_log(name)
    return load_bridge(name) if "/" in name else load_outbound(name)


def all_names() -> list[str]:
    return outbound_names() + bridge_names() + inbound_log_names()
