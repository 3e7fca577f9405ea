"""Run one scenario against the simulated Asterisk harness (``asterisk_harness``), as the
Asterisk flow tests and their edge, agent and conformance cousins do."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from asterisk_harness import Harness, harness

Scenario = Callable[[Harness], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, **kw: object) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        async with harness(tmp_path, **kw) as h:  # type: ignore[arg-type]
            await scenario(h)

    asyncio.run(main())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
