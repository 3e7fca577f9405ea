"""What the FastAGI routes (``consent``, ``agent``) and the channel controls act on: the
adapter's options and shared state, named as a protocol so that the routes import this and
never the adapter that registers them (no import cycle)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from agi.ami import AmiClient
from agi.calls import CallRegistry
from agi.closure import Closer
from recorder.finalize.spool import Spool
from recorder.live.callbook import CallBook


@dataclass(frozen=True)
class AsteriskOptions:
    """The ``[asterisk]`` settings the adapter uses (same names as in the config file)."""

    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = ""
    ami_secret: str = ""
    ami_system_user: str = ""
    ami_system_secret: str = ""
    max_sessions: int = 5000
    env_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    header_wait_s: float = 2.0
    spy_group: str = "consented"

    @classmethod
    def from_settings(cls, settings: Any) -> AsteriskOptions:
        """From any object with these attributes (the config's ``[asterisk]`` section)."""
        names = {f.name for f in fields(cls)}
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})


class Asterisk(Protocol):
    """The adapter as its routes see it (:class:`agi.adapter.AsteriskAdapter` is one)."""

    calls: CallBook
    spool: Spool
    options: AsteriskOptions
    prompt_dir: Path
    ami: AmiClient | None
    ami_system: AmiClient | None
    registry: CallRegistry
    closer: Closer

    def spawn(self, coro: Any) -> None: ...

    def watch(self, coro: Any) -> None: ...

    async def recording_ref(self, key: str, recording_id: str, ref: str) -> None: ...
