"""One call as FreeSWITCH knows it: its legs, its recordings, who listens. The registry
(``calls``) keeps them; the out-of-band control (``remote``) acts on one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FsCall:
    """One call as FreeSWITCH knows it. ``key`` is its ``Channel-Call-UUID``."""

    key: str
    direction: str = "inbound"
    customer_uuid: str | None = None  # the leg we record; None until an outbound call bridges
    session_uuid: str | None = None  # the leg our outbound socket drove
    recordings: dict[str, str] = field(default_factory=dict)  # recording id -> path
    closed: set[str] = field(default_factory=set)
    listeners: set[str] = field(default_factory=set)  # supervisors' legs eavesdropping
    hung_up: bool = False

    @property
    def open_recordings(self) -> set[str]:
        return set(self.recordings) - self.closed
