"""The daemon's control socket: how ``callconsent record …`` reaches a call in progress.

The consent machine of a live call lives in the daemon, so a command from a shell must go
through it (acting on the PBX directly would leave the machine believing the wrong thing).
A Unix socket, ``<data_dir>/control.sock``, mode 0660 (the daemon's group): one JSON request
line, one JSON reply line. The daemon names the caller by the socket's peer credentials, so
the audit log says which OS account asked, whatever the request claims.

Request: ``{"op": "record", "verb": "pause", "call": "<linkedid or Call-UUID>",
"pbx": "asterisk" | "freeswitch" | null, "actor": "alice"}``.
Reply: ``{"ok": true, "status": "granted", "done": ["PauseRecording"]}`` or
``{"ok": false, "error": "…"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

import consent_ivr as c
from recorder.live.callbook import CallBook
from recorder.live.port import CallGone

log = logging.getLogger("callconsent.control")
SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096
PBXS = ("asterisk", "freeswitch")


class ControlError(Exception):
    """The daemon could not be reached, or refused the request."""


class ControlServer:
    name = "control"

    def __init__(self, path: Path, calls: CallBook) -> None:
        self.path = path
        self.calls = calls
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self.path.is_socket():
            self.path.unlink()  # left over from a daemon that did not stop cleanly
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        log.info("listening", extra={"kv": {"component": self.name, "socket": self.path}})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            peer = _peer(writer)
            try:
                reply = await self.handle(json.loads(line[:MAX_REQUEST] or b"{}"), peer)
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def handle(self, req: dict[str, Any], peer: str) -> dict[str, Any]:
        if req.get("op") != "record":
            return {"ok": False, "error": f"unknown op {req.get('op')!r}"}
        verb, call_id = str(req["verb"]), str(req["call"])
        if verb not in c.events.AGENT_VERBS:
            return {"ok": False, "error": f"verb must be one of {', '.join(c.events.AGENT_VERBS)}"}
        pbxs = [req["pbx"]] if req.get("pbx") else list(PBXS)
        live = None
        for pbx in pbxs:
            live = live or await self.calls.lookup(pbx, call_id)
        if live is None:
            return {"ok": False, "error": f"no call {call_id} in progress on this host"}
        actor = f"{req.get('actor') or 'cli'} via {peer}"[:64]
        try:
            done = await live.agent(verb, actor)
        except CallGone as exc:
            return {"ok": False, "error": f"the PBX could not be reached for this call: {exc}"}
        refused = [a for a in done if isinstance(a, c.RejectCommand)]
        if refused:
            return {"ok": False, "error": f"{verb} refused: {refused[0].reason}"}
        log.info("control_command", extra={"kv": {"verb": verb, "call": live.ref.id, "by": peer}})
        return {
            "ok": True,
            "status": live.status.value if live.status else None,
            "done": [type(a).__name__ for a in done],
        }


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (OSError, KeyError):
        return "unknown peer"


def request(path: Path, payload: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Send one request to the daemon and return its reply (blocking; for the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise ControlError(f"the daemon is not running here (no {path})") from None
    except PermissionError:
        raise ControlError(
            f"no permission to use {path}: run as the daemon's account or a member of its group"
        ) from None
    except (ConnectionRefusedError, TimeoutError, OSError) as exc:
        raise ControlError(f"could not talk to the daemon at {path}: {exc}") from None
    if not data:
        raise ControlError("the daemon closed the connection without a reply")
    return json.loads(data)
