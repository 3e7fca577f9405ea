"""What the Asterisk adapter knows about each call beyond the consent machine: which channel
is the customer leg, which spool files its recordings write, who listens in.

The :class:`recorder.live.callbook.CallBook` keys calls by ``CHANNEL(linkedid)``; AMI events name
channels by uniqueid, so the registry indexes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recorder.live.port import RecordingFile


@dataclass
class AsteriskCall:
    key: str  # CHANNEL(linkedid): the CallBook's pbx_call_id
    customer_uid: str | None = None  # the customer leg's uniqueid: the recorded channel
    files: dict[str, RecordingFile] = field(default_factory=dict)  # recording id -> file
    open_recordings: set[str] = field(default_factory=set)  # started, not yet closed
    held: set[str] = field(default_factory=set)  # registered, MixMonitor not yet run (beep)
    spies: dict[str, str] = field(default_factory=dict)  # listener uniqueid -> channel name
    agi_sessions: int = 0
    gone: bool = False  # the customer leg hung up


class CallRegistry:
    def __init__(self) -> None:
        self._by_key: dict[str, AsteriskCall] = {}
        self._by_uid: dict[str, AsteriskCall] = {}
        # listener uniqueid -> the call it listens to: a Hangup (every channel's, thousands
        # a minute) is matched in O(1), not by walking every call in progress
        self._by_spy: dict[str, AsteriskCall] = {}

    def get(self, key: str) -> AsteriskCall | None:
        return self._by_key.get(key)

    def attach(self, key: str, customer_uid: str | None = None) -> AsteriskCall:
        """The call for ``key``, created on first sight; ``customer_uid`` is set once."""
        call = self._by_key.setdefault(key, AsteriskCall(key))
        if customer_uid and call.customer_uid is None:
            call.customer_uid = customer_uid
            self._by_uid[customer_uid] = call
        return call

    def by_customer(self, uniqueid: str) -> AsteriskCall | None:
        return self._by_uid.get(uniqueid)

    def by_spy(self, spy_uid: str) -> AsteriskCall | None:
        call = self._by_spy.get(spy_uid)
        return call if call is not None and spy_uid in call.spies else None

    def spy_started(self, call: AsteriskCall, spy_uid: str, channel: str) -> None:
        call.spies[spy_uid] = channel
        self._by_spy[spy_uid] = call

    def spy_gone(self, spy_uid: str) -> None:
        """A listener stopped or hung up (its Hangup always comes: the index cannot grow)."""
        call = self._by_spy.pop(spy_uid, None)
        if call is not None:
            call.spies.pop(spy_uid, None)

    def drop(self, key: str) -> None:
        call = self._by_key.pop(key, None)
        if call is not None and call.customer_uid is not None:
            self._by_uid.pop(call.customer_uid, None)
        if call is not None:
            for spy_uid in call.spies:
                self._by_spy.pop(spy_uid, None)

    def live(self) -> list[AsteriskCall]:
        return [c for c in self._by_key.values() if not c.gone]

    def __len__(self) -> int:
        return len(self._by_key)
