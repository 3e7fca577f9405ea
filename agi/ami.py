"""The AMI client: panoramisk's ``Manager`` with login, reconnect with backoff, and typed
errors, for a ``write=call`` user (and, opt-in, a second ``write=system`` one).

What we use AMI for (``../shared/pbx-transcripts/asterisk-bridge/``, s2 and s6):

* events, ``read=call``: ``Hangup`` (the customer leg is gone: its recording closes),
  ``ChanSpyStart``/``ChanSpyStop`` (who listens to whom), ``MixMonitorStart/Stop/Mute``
  (logged; ``MixMonitorStart`` carries neither ID nor file, and ``MixMonitorStop`` never comes
  on hangup, so nothing depends on them). All four are ``call``-class events, and the login
  asks for that class only (``Events: call``, manager.c ``set_eventmask``): with ``Events:
  on`` Asterisk sends every AGI command's start and end, every dialplan step and variable
  set, DTMF and RTCP reports too. The capture ``asterisk/ami-accept_brief.log`` (one consent
  call) is 71 events after the login, 22 of them ``call``; each other was parsed and handed
  to us for nothing;
* actions a ``write=call`` user may send: ``MixMonitorMute`` (pause; there is no
  ``PauseMonitor`` any more), ``StopMixMonitor``, ``Setvar``, ``Getvar``, ``Hangup``,
  ``PlayDTMF`` — always with ``Channel`` = the customer leg's uniqueid and, for recordings, the
  ``MixMonitorID`` (without it every MixMonitor on the channel is hit);
* ``MixMonitor`` needs ``write=system`` (which could also restart the PBX), so it is only used
  through the optional second user, to start a recording from outside the call.

Panoramisk reconnects every 2 s for ever and re-sends unanswered actions after a reconnect;
here reconnects back off exponentially (with jitter), and every action we send is
"forgettable": a ``StopMixMonitor`` is never replayed minutes later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from recorder import metrics

log = logging.getLogger("callconsent.ami")

OUR_ACTIONS = (
    "login",
    "logoff",
    "ping",
    "mixmonitormute",
    "stopmixmonitor",
    "mixmonitor",
    "setvar",
    "getvar",
    "hangup",
    "playdtmf",
    "status",
)


class AmiError(Exception):
    """Asterisk answered ``Response: Error``; ``message`` is its ``Message`` header."""

    def __init__(self, action: str, message: str) -> None:
        self.action, self.message = action, message
        super().__init__(f"AMI {action}: {message}")


class PermissionDenied(AmiError):
    """The AMI user lacks the class this action needs (``MixMonitor`` needs write=system)."""


class NoSuchChannel(AmiError):
    """The channel is gone."""


class AmiUnavailable(ConnectionError):
    """Not logged in to AMI (not configured, down, or reconnecting)."""


def _error(action: str, message: str) -> AmiError:
    if message == "Permission denied":
        return PermissionDenied(action, message)
    if message.startswith(("No such channel", "Channel does not exist")):
        return NoSuchChannel(action, message)
    return AmiError(action, message)


class _GuardedProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol, except that a message it cannot handle (a header given twice
    where one is expected, a mangled ActionID) is dropped with one warning line instead of
    an exception out of ``data_received`` (which asyncio logs as a fatal error, with a
    traceback, and answers by closing the connection)."""

    def handle_message(self, message: Message) -> None:
        try:
            super().handle_message(message)
        except Exception as exc:
            log.warning(
                "ami_message_dropped",
                extra={
                    "kv": {
                        "why": f"{type(exc).__name__}: {exc}",
                        "event": str(message.get("Event", ""))[:64],
                    }
                },
            )


class _Manager(Manager):
    """panoramisk's Manager with our reconnect policy instead of its fixed 2 s loop."""

    client: AmiClient

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            self.client._schedule_reconnect(f"connect failed: {f.exception()}")
            return
        super().connection_made(f)

    def login(self, future: asyncio.Future[Any]) -> bool:
        ok = bool(super().login(future))
        self.client._logged_in(ok, future.result())
        return ok

    def connection_lost(self, exc: Exception | None) -> None:
        self._connected = False
        self.authenticated = False
        metrics.PBX_CONNECTED.labels("asterisk", self.client.name).set(0)
        if self.pinger:
            self.pinger.cancel()
            self.pinger = None
        self.client._schedule_reconnect("connection lost")


#: the event classes a login with events asks for (see the module docstring)
EVENT_CLASSES = "call"


class AmiClient:
    """One AMI login. ``events`` is its ``Events`` header: :data:`EVENT_CLASSES`, ``off`` (a
    login for actions only), or ``on`` (the tests' observers); ``on_event(message)`` gets
    each event sent; ``on_ready()`` runs after each successful login (to re-check calls
    whose events we may have missed)."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        secret: str,
        *,
        on_event: Callable[[Message], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        events: str = EVENT_CLASSES,
        name: str = "ami",
        backoff: tuple[float, float] = (0.5, 30.0),
        action_timeout_s: float = 5.0,
    ) -> None:
        self.host, self.port, self.user, self.name = host, port, user, name
        self.on_event, self.on_ready = on_event, on_ready
        self.action_timeout_s = action_timeout_s
        self._backoff_min, self._backoff_max = backoff
        self._delay = self._backoff_min
        self._closing = False
        self._reconnect: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self.logins = 0
        self.manager = _Manager(
            host=host,
            port=port,
            username=user,
            secret=secret,
            events=events,
            ping_delay=10,
            ping_interval=10,
            forgetable_actions=OUR_ACTIONS,
            log=logging.getLogger("callconsent.ami.panoramisk"),
            protocol_factory=_GuardedProtocol,
        )
        self.manager.client = self
        if events != "off":
            self.manager.register_event("*", self._dispatch)

    @property
    def connected(self) -> bool:
        return bool(self.manager.authenticated) and not self._closing

    async def start(self, wait_s: float = 3.0) -> bool:
        """Connect and log in; keep trying in the background if it fails. Returns whether the
        first login succeeded within ``wait_s``."""
        self.manager.loop = asyncio.get_running_loop()
        self.manager.connect()
        try:
            await asyncio.wait_for(self._ready.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self.connected:
            with contextlib.suppress(AmiError, AmiUnavailable, TimeoutError):
                await self.action("Logoff")
        self._closing = True
        self.manager.close()

    async def action(self, name: str, **headers: str) -> Message:
        """Send one action and return its response; ``Response: Error`` raises."""
        if not self.connected:
            raise AmiUnavailable(f"{self.name} is not logged in to {self.host}:{self.port}")
        for key, value in headers.items():
            if any(ch in str(value) for ch in "\r\n") or len(str(value)) > 900:
                raise ValueError(f"refusing an AMI header {key} with a line break or > 900 chars")
        future = self.manager.send_action({"Action": name, **headers})
        response = await asyncio.wait_for(future, self.action_timeout_s)
        if isinstance(response, list):  # as_list actions; we send none
            response = response[0]
        if response.get("Response") == "Error":
            raise _error(name, str(response.get("Message", "")))
        return response

    # -- connection life cycle (called by _Manager) --------------------------------------

    def _logged_in(self, ok: bool, response: Message) -> None:
        metrics.PBX_CONNECTED.labels("asterisk", self.name).set(1 if ok else 0)
        if ok:
            self.logins += 1
            self._delay = self._backoff_min
            log.info(
                "ami_logged_in",
                extra={"kv": {"client": self.name, "user": self.user, "logins": self.logins}},
            )
            self._ready.set()
            if self.on_ready is not None:
                self.on_ready()
            return
        log.error(
            "ami_login_failed",
            extra={"kv": {"client": self.name, "user": self.user, "why": response.get("Message")}},
        )
        self.manager.close()
        self._schedule_reconnect("login failed")

    def _schedule_reconnect(self, why: str) -> None:
        self._ready.clear()
        if self._closing or self._reconnect is not None:
            return
        delay = self._delay * (0.8 + 0.4 * random.random())
        self._delay = min(self._delay * 2, self._backoff_max)
        log.warning(
            "ami_reconnect_scheduled",
            extra={"kv": {"client": self.name, "why": why, "in_s": round(delay, 2)}},
        )
        self._reconnect = asyncio.get_running_loop().call_later(delay, self._reconnect_now)

    def _reconnect_now(self) -> None:
        self._reconnect = None
        if not self._closing:
            self.manager.connect()

    def _dispatch(self, _manager: Manager, message: Message) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(message)
        except Exception:
            log.exception("ami_event_handler_failed", extra={"kv": {"event": message.event}})
