"""The AMI side of the simulated Asterisk: a TCP server speaking AMI as Asterisk 22 did in the
captures (banner, responses, event header order), with per-user write classes: a
``write=call`` user gets ``Permission denied`` for ``MixMonitor``, ``Originate`` and
``Command`` (capture ``s6_callonly_perms``). A session gets an event if its class is one
the login's ``Events`` header asked for, as Asterisk 22's ``set_eventmask`` reads it (``on``:
all, ``off``: none, ``call,system``: those classes; ``FullyBooted`` is a ``system`` event),
one the user may read (manager.conf ``read``), and, if the user has ``eventfilter`` include
lines, an event they name (``dialplan/asterisk/manager_callconsent.conf``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asterisk_sim import SimAsterisk, SimChannel

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
# action -> the write classes that allow it (Asterisk 22 manager.c / app_mixmonitor.c)
ACTION_CLASSES = {
    "mixmonitor": {"system"},
    "mixmonitormute": {"system", "call"},
    "stopmixmonitor": {"system", "call"},
    "setvar": {"call"},
    "getvar": {"call", "reporting"},
    "hangup": {"system", "call"},
    "playdtmf": {"call"},
    "originate": {"originate"},
    "command": {"command"},
    "redirect": {"call"},
}


def message(*pairs: tuple[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"


#: every event class (Asterisk 22 manager.c ``perms``): what ``Events: on`` asks for
ALL_CLASSES = frozenset(
    {"system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf",
     "reporting", "cdr", "dialplan", "originate", "agi", "cc", "aoc", "test", "security",
     "message"}
)  # fmt: skip


def event_mask(value: str | None) -> frozenset[str]:
    """The classes a login's ``Events`` header asks for (manager.c ``strings_to_mask``):
    none given keeps every class; a true word all, a false one none; otherwise the classes
    named (a name Asterisk does not know adds none). A number is a bitmask there; here 0 is
    none and any other all (no test sends one)."""
    word = (value or "").strip().lower()
    if not word:
        return ALL_CLASSES
    if word.isdigit():
        return ALL_CLASSES if int(word) else frozenset()
    if word in ("yes", "true", "y", "t", "on"):
        return ALL_CLASSES
    if word in ("no", "false", "n", "f", "off"):
        return frozenset()
    return frozenset(c.strip() for c in word.split(",")) & ALL_CLASSES


@dataclass
class AmiUser:
    secret: str
    write: set[str]
    read: frozenset[str] = ALL_CLASSES
    #: manager.conf ``eventfilter(action(include),name(X))`` lines: only these events
    events: frozenset[str] | None = None


def manager_conf_user(conf: str, section: str, secret: str) -> AmiUser:
    """A manager.conf user as the simulator needs it: its ``write`` and ``read`` classes and
    the events its ``eventfilter(action(include),name(…))`` lines let through."""
    body = conf.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    classes: dict[str, frozenset[str]] = {}
    names: set[str] = set()
    for line in body.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("read", "write"):
            classes[key.strip()] = frozenset(c.strip() for c in value.split(",")) & ALL_CLASSES
        elif key.startswith("eventfilter(action(include),name("):
            names.add(key.split("name(", 1)[1].split(")", 1)[0])
    return AmiUser(
        secret,
        set(classes.get("write", ALL_CLASSES)),
        classes.get("read", ALL_CLASSES),
        frozenset(names) or None,
    )


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    user: str | None = None
    events: frozenset[str] = ALL_CLASSES  # the classes its login asked for and it may read
    names: frozenset[str] | None = None  # its user's event filter

    def wants(self, category: str, name: str) -> bool:
        return (
            bool(self.user)
            and category in self.events
            and (self.names is None or name in self.names)
        )


@dataclass
class SimAmi:
    sim: SimAsterisk
    users: dict[str, AmiUser] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    sent: list[bytes] = field(default_factory=list)  # every message we sent, for conformance
    received: list[dict[str, str]] = field(default_factory=list)  # every action we got
    refuse_logins: bool = False
    _clients: list[_Client] = field(default_factory=list)
    _server: asyncio.base_events.Server | None = None
    _session_ids: itertools.count = field(default_factory=lambda: itertools.count(0x7F2410004340))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in self._clients:
            client.writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    def kick_all(self) -> None:
        """Drop every connection (AMI restart): clients must reconnect."""
        for client in list(self._clients):
            client.writer.close()

    @property
    def logged_in(self) -> list[str]:
        return [c.user for c in self._clients if c.user]

    def emit(self, event: str, pairs: list[tuple[str, str]], category: str = "call") -> None:
        data = message(
            ("Event", event),
            ("Privilege", f"{category},all"),
            ("Timestamp", f"{time.time():.6f}"),
            *pairs,
        )
        for client in self._clients:
            if client.wants(category, event):
                self._send(client, data)

    def _send(self, client: _Client, data: bytes) -> None:
        self.sent.append(data)
        client.writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.append(client)
        writer.write(BANNER)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                headers: dict[str, str] = {}
                for line in raw.decode().split("\r\n"):
                    key, sep, value = line.partition(": ")
                    if sep:
                        headers.setdefault(key.lower(), value)
                self.received.append(headers)
                for reply in self._handle(client, headers):
                    self._send(client, reply)
                await writer.drain()
                if headers.get("action", "").lower() == "logoff":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.remove(client)
            writer.close()

    def _handle(self, client: _Client, h: dict[str, str]) -> list[bytes]:
        action = h.get("action", "").lower()
        aid = ("ActionID", h.get("actionid", ""))
        if action == "login":
            user = self.users.get(h.get("username", ""))
            if self.refuse_logins or user is None or user.secret != h.get("secret"):
                return [message(("Response", "Error"), aid, ("Message", "Authentication failed"))]
            client.user = h["username"]
            client.events = event_mask(h.get("events")) & user.read
            client.names = user.events
            out = [message(("Response", "Success"), aid, ("Message", "Authentication accepted"))]
            if "system" in client.events:
                out.append(
                    message(
                        ("Event", "FullyBooted"),
                        ("Privilege", "system,all"),
                        ("Uptime", "577"),
                        ("LastReload", "54"),
                        ("Status", "Fully Booted"),
                    )
                )
            return out
        if client.user is None:
            return [message(("Response", "Error"), aid, ("Message", "Permission denied"))]
        if action == "logoff":
            return [message(("Response", "Goodbye"), aid, ("Message", "Thanks for all the fish."))]
        if action == "ping":
            return [
                message(
                    ("Response", "Success"),
                    aid,
                    ("Ping", "Pong"),
                    ("Timestamp", f"{time.time():.6f}"),
                )
            ]
        needed = ACTION_CLASSES.get(action)
        if needed is None:
            text = (
                f"Invalid/unknown command: {h.get('action')}. "
                "Use Action: ListCommands to show available commands."
            )
            return [message(("Response", "Error"), aid, ("Message", text))]
        if not needed & self.users[client.user].write:
            return [message(("Response", "Error"), aid, ("Message", "Permission denied"))]
        handler: Callable[[dict[str, str], tuple[str, str]], list[bytes]] = getattr(
            self, f"_{action}"
        )
        return handler(h, aid)

    def _channel(self, h: dict[str, str]) -> SimChannel | None:
        return self.sim.find_channel(h.get("channel", ""))

    def _getvar(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        value = chan.evaluate("${" + h.get("variable", "") + "}")
        return [
            message(
                ("Response", "Success"), aid, ("Variable", h.get("variable", "")), ("Value", value)
            )
        ]

    def _setvar(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        chan.set_var(h.get("variable", ""), h.get("value", ""))
        return [message(("Response", "Success"), aid, ("Message", "Variable Set"))]

    def _hangup(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None or not chan.alive:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        self.sim.hangup_soon(chan)
        return [message(("Response", "Success"), aid, ("Message", "Channel Hungup"))]

    def _playdtmf(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "Channel not found"))]
        chan.heard_dtmf.append(h.get("digit", ""))
        return [message(("Response", "Success"), aid, ("Message", "DTMF successfully queued"))]

    def _mixmonitormute(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        mon = chan.mixmonitor(h.get("mixmonitorid"))
        if mon is not None:
            mon.muted = h.get("state") == "1"
        chan.events.append(("MixMonitorMute", h.get("mixmonitorid"), h.get("state")))
        self.emit(
            "MixMonitorMute",
            [
                *chan.ami_fields(),
                ("Direction", h.get("direction", "both")),
                ("State", h.get("state", "1")),
            ],
        )
        return [message(("Response", "Success"), aid)]

    def _stopmixmonitor(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        if not chan.stop_mixmonitor(h.get("mixmonitorid")):
            return [
                message(
                    ("Response", "Error"), aid, ("Message", "Could not stop monitoring channel")
                )
            ]
        self.emit("MixMonitorStop", chan.ami_fields())
        return [message(("Response", "Success"), aid)]

    def _mixmonitor(self, h: dict[str, str], aid: tuple[str, str]) -> list[bytes]:
        chan = self._channel(h)
        if chan is None:
            return [message(("Response", "Error"), aid, ("Message", "No such channel"))]
        if not h.get("file"):
            text = "Could not start monitoring channel"
            return [message(("Response", "Error"), aid, ("Message", text))]
        mon = chan.start_mixmonitor(h["file"], h.get("options", ""))
        return [message(("Response", "Success"), aid, ("MixMonitorID", mon.id))]

    def _originate(
        self, h: dict[str, str], aid: tuple[str, str]
    ) -> list[bytes]:  # pragma: no cover
        return [message(("Response", "Error"), aid, ("Message", "Originate is not simulated"))]

    _command = _originate
    _redirect = _originate
