"""A simulated FreeSWITCH 1.10 for protocol tests over real sockets.

Built from the captures (``tests/fixtures/freeswitch``), not from memory:

* every frame it sends is a captured frame used as a template: the ``connect`` reply is the
  captured 110-header block (no Content-Length, Content-Type near the end, values URL-encoded
  with FreeSWITCH's own rule), events are captured events with their channel headers, variables
  and event-specific headers replaced, in the captured header order;
* the order of events follows the captures: ``play_and_get_digits`` sends CHANNEL_EXECUTE,
  PLAYBACK_START, DTMF, PLAYBACK_STOP, CHANNEL_EXECUTE_COMPLETE (barge-in) or PLAYBACK_STOP then
  DTMF (answer after the prompt); a hangup during the prompt sends CHANNEL_HANGUP,
  PLAYBACK_STOP, the app's completion with ``Answer-State: hangup``, CHANNEL_UNPARK, the socket
  app's completion, CHANNEL_STATE, RECORD_STOP, CHANNEL_STATE, CHANNEL_HANGUP_COMPLETE, then a
  ``linger`` disconnect notice; ``exit`` gets ``+OK bye``, a ``disconnect`` notice and a close;
* ``sendmsg`` on a dead channel still answers ``+OK`` (and nothing else); ``uuid_record``
  answers ``+OK Success``, ``-ERR Cannot locate session!``, ``-ERR Cannot stop record
  session!``, ``-ERR Cannot mask recording session!``; a restricted user gets
  ``-ERR permission denied`` as a ``command/reply``;
* recordings are real WAV files in the spool whose header sizes stay 0 until RECORD_STOP;
  a masked stretch is digital silence; ``RECORD_STEREO`` gives two channels.

Keys are pressed with :meth:`FakeFreeSwitch.press`: the shipped ``callconsent.xml`` binds them
(``bind_digit_action``) and fires their events as the real one does (see
:mod:`freeswitch_sim_dialplan`).

Audio time is virtual: :meth:`FakeFreeSwitch.talk` appends that many seconds of audio to every
running recording of a call, so tests never depend on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import struct
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import fs_captures as fc
from freeswitch_sim_dialplan import Dialplan, Keys

from esl_listener import protocol as p

URL_UNSAFE = '\r\n #%&+:;<=>?@[\\]^`{|}"'
BYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
RATE = 8000
FRAME_S = 0.020  # one 20 ms media frame (ptime 20)
SOCKET_ADDR = "127.0.0.1:8084"


def fs_encode(value: str) -> str:
    """``switch_url_encode`` (switch_utils.c): unsafe and non-printable bytes as %XX; an
    existing %XX is left alone (FreeSWITCH does not double-encode)."""
    out = []
    data = value.encode()
    i = 0
    while i < len(data):
        b = data[i]
        ch = chr(b)
        hexdigits = "0123456789ABCDEF"
        keep = (
            ch == "%"
            and i + 2 < len(data) + 0
            and all(chr(x) in hexdigits for x in data[i + 1 : i + 3])
            and len(data[i + 1 : i + 3]) == 2
        )
        if not keep and (b < 0x20 or b > 0x7E or ch in URL_UNSAFE):
            out.append(f"%{b:02X}")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _captured_events() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for name in (
        "accept_record_session",
        "caller_hangup_during_prompt",
        "s1_campaign_socket_path_close/inbound-monitor",
        "s7_bind_digit_action/inbound-monitor",  # CUSTOM: the agent codes' event
        "s3_agent_meta_app_mask/inbound-monitor",
    ):
        for step in fc.load(name).steps:
            if step.direction != "rx":
                continue
            for frame in p.FrameParser().feed(step.data):
                if frame.content_type == "text/event-plain":
                    event = p.parse_plain_event(frame.body)
                    found.setdefault(event.name, list(event.headers.items()))
    return found


EVENT_TEMPLATES = _captured_events()
CONNECT_TEMPLATE = list(
    p.FrameParser().feed(fc.load("accept_record_session").steps[1].data)[0].headers.items()
)
_CHANNEL_HEADERS = {
    "Unique-ID": "uuid",
    "Caller-Unique-ID": "uuid",
    "Channel-Unique-ID": "uuid",
    "Channel-Call-UUID": "call_uuid",
    "Channel-Name": "name",
    "Caller-Channel-Name": "name",
    "Channel-Channel-Name": "name",
    "Caller-Caller-ID-Number": "number",
    "Caller-Orig-Caller-ID-Number": "number",
    "Channel-Caller-ID-Number": "number",
    "Channel-Orig-Caller-ID-Number": "number",
    "Caller-ANI": "number",
    "Channel-ANI": "number",
    "Caller-Destination-Number": "destination",
    "Channel-Destination-Number": "destination",
    "Answer-State": "answer_state",
    "Channel-State": "state",
    "Caller-Privacy-Hide-Number": "hide",
    "Channel-Privacy-Hide-Number": "hide",
}
# headers of one event kind; dropped from templates of another
_SPECIFIC = {
    "Application",
    "Application-Data",
    "Application-Response",
    "Application-UUID",
    "Hangup-Cause",
    "DTMF-Digit",
    "DTMF-Duration",
    "DTMF-Source",
    "Record-File-Path",
    "Record-Completion-Cause",
    "Other-Leg-Unique-ID",
    "Other-Leg-Channel-Name",
    "Other-Type",
    "Bridge-A-Unique-ID",
    "Bridge-B-Unique-ID",
    "Event-Subclass",
    "cc_cmd",
    "cc_agent",
    "cc_customer_uuid",
}


@dataclass
class Recording:
    path: Path
    channels: int
    masked: bool = False
    frames: int = 0


@dataclass
class Leg:
    uuid: str
    call_uuid: str
    name: str
    number: str
    destination: str
    socket_path: str = "consent/default"
    hide: str = "false"
    answer_state: str = "ringing"
    state: str = "CS_EXECUTE"
    up: bool = True
    variables: dict[str, str] = field(default_factory=dict)
    exports: set[str] = field(default_factory=set)
    recordings: dict[str, Recording] = field(default_factory=dict)
    peer: Leg | None = None
    keys: Keys = field(default_factory=Keys)  # bind_digit_action bindings on this leg
    session: _Wire | None = None  # the outbound socket session running on this leg, if any


@dataclass
class Caller:
    """What the caller does at each consent question: a key (``"1"``), ``None`` (silence) or
    ``"hangup"``; ``barge`` presses during the prompt rather than after it."""

    answers: list[str | None] = field(default_factory=lambda: ["1"])
    barge: bool = True


class _Wire:
    """FreeSWITCH's side of one socket: frames out, command blocks in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: set[str] = set()
        self.customs: set[str] = set()
        self.closed = False
        self._held: list[bytes] | None = None  # events waiting for the reply they follow

    async def read_command(self) -> tuple[str, dict[str, str]] | None:
        try:
            block = await self.reader.readuntil(b"\n\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        first, *lines = block.decode().rstrip("\n").split("\n")
        return first, dict(line.split(": ", 1) for line in lines if ": " in line)

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def hold_events(self) -> None:
        """Events sent from now on wait for :meth:`release_events` (an ``api`` command's
        events follow its reply on the socket that ran it: capture accept_uuid_record_json)."""
        self._held = []

    def release_events(self) -> None:
        held, self._held = self._held or [], None
        for data in held:
            self.send(data)

    def reply(self, text: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        lines = ["Content-Type: command/reply", f"Reply-Text: {text}"]
        lines += [f"{k}: {v}" for k, v in extra]
        self.send(("\n".join(lines) + "\n\n").encode())

    def api_response(self, body: str) -> None:
        data = body.encode()
        self.send(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data)

    def event(self, headers: list[tuple[str, str]]) -> None:
        body = "".join(f"{k}: {fs_encode(v)}\n" for k, v in headers).encode() + b"\n"
        data = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
        if self._held is not None:
            self._held.append(data)
        else:
            self.send(data)

    def wants(self, headers: list[tuple[str, str]]) -> bool:
        h = dict(headers)
        if h["Event-Name"] == "CUSTOM":
            return "CUSTOM" in self.events and h.get("Event-Subclass") in self.customs
        return h["Event-Name"] in self.events or "ALL" in self.events

    def disconnect(self, disposition: str, leg: Leg | None, linger: str = "-1") -> None:
        lines = ["Content-Type: text/disconnect-notice"]
        if leg is not None:
            lines.append(f"Controlled-Session-UUID: {leg.uuid}")
        lines.append(f"Content-Disposition: {disposition}")
        body = b"" if disposition == "linger" else BYE
        if disposition == "linger" and leg is not None:
            lines += [f"Channel-Name: {leg.name}", f"Linger-Time: {linger}"]
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\n".join(lines) + "\n\n").encode() + body)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                await self.writer.drain()
            self.writer.close()


class FakeFreeSwitch:
    """One simulated FreeSWITCH: an inbound event socket plus the outbound ``socket`` app."""

    def __init__(
        self,
        *,
        password: str = "ClueCon",
        users: dict[str, tuple[str, set[str] | None, set[str] | None]] | None = None,
        dialplan: str | None = None,
        frame_s: float = FRAME_S,
    ) -> None:
        self.password = password
        #: each ``execute`` waits for the channel's next media frame (captured: +20 ms from
        #: the ``sendmsg`` to its CHANNEL_EXECUTE); ``api`` commands do not
        self.frame_s = frame_s
        #: (monotonic time, event name, leg uuid, Record-File-Path or DTMF digit) of every
        #: DTMF, CHANNEL_EXECUTE and RECORD_START, in order
        self.timeline: list[tuple[float, str, str, str]] = []
        self.users = users or {}  # user@domain -> (password, allowed events, allowed api)
        self.legs: dict[str, Leg] = {}
        self.api_log: list[str] = []
        self.sendmsg_log: list[tuple[str, str]] = []
        self._inbound: list[tuple[_Wire, set[str] | None, set[str] | None]] = []
        self._server: asyncio.base_events.Server | None = None
        self._seq = itertools.count(1000)
        self.port = 0
        self.dialplan = Dialplan(self.emit, dialplan)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_inbound, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for wire, *_ in self._inbound:
            await wire.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def drop_inbound(self) -> None:
        """FreeSWITCH restarts (or the network hiccups): every inbound client is cut off."""
        for wire, *_ in list(self._inbound):
            await wire.close()

    @property
    def inbound_clients(self) -> int:
        return sum(not w.closed for w, *_ in self._inbound)

    # -- events ----------------------------------------------------------------------------

    def _headers(self, name: str, leg: Leg, specific: dict[str, str]) -> list[tuple[str, str]]:
        template = EVENT_TEMPLATES[name]
        out: list[tuple[str, str]] = []
        values = {
            "uuid": leg.uuid,
            "call_uuid": leg.call_uuid,
            "name": leg.name,
            "number": leg.number,
            "destination": leg.destination,
            "answer_state": leg.answer_state,
            "state": leg.state,
            "hide": leg.hide,
        }
        placed = set()
        for k, v in template:
            if k.startswith("variable_") or (k in _SPECIFIC and k not in specific):
                continue
            if k == "Event-Sequence":
                v = str(next(self._seq))
            elif k in _CHANNEL_HEADERS:
                v = values[_CHANNEL_HEADERS[k]]
            elif k in specific:
                v = specific[k]
                placed.add(k)
            out.append((k, v))
        out += [(k, v) for k, v in specific.items() if k not in placed]
        out += [(f"variable_{k}", v) for k, v in leg.variables.items()]
        return out

    def emit(self, name: str, leg: Leg, wire: _Wire | None = None, **specific: str) -> None:
        """Send one event to the leg's outbound session (if subscribed) and to every inbound
        client that subscribed to it (and may receive it)."""
        fields = {k.replace("_", "-") if k[0].isupper() else k: v for k, v in specific.items()}
        if name in _TIMED:
            detail = fields.get(_TIMED[name], "")
            self.timeline.append((time.monotonic(), name, leg.uuid, detail))
        headers = self._headers(name, leg, fields)
        if wire is not None and (name in wire.events or name in _MYEVENTS):
            wire.event(headers)
        for client, allowed, _api in self._inbound:
            if client.wants(headers) and (allowed is None or name in allowed):
                client.event(headers)

    def digit_to_record(self, leg: Leg) -> tuple[int, float]:
        """From the caller's key to the recording's RECORD_START on ``leg``: how many
        applications ran (each waited for a media frame, ``frame_s``) and the seconds."""
        mine = [(t, name) for t, name, u, _ in self.timeline if u == leg.uuid]
        start = next(i for i, (_, name) in enumerate(mine) if name == "RECORD_START")
        key = max(i for i, (_, name) in enumerate(mine[:start]) if name == "DTMF")
        executes = sum(name == "CHANNEL_EXECUTE" for _, name in mine[key:start])
        return executes, mine[start][0] - mine[key][0]

    # -- the inbound event socket ----------------------------------------------------------

    async def _serve_inbound(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One inbound event-socket client. A client that drops the connection mid-write ends
        it, as it does on a real FreeSWITCH: the simulator does not raise about it."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self._serve_inbound_client(reader, writer)

    async def _serve_inbound_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        wire = _Wire(reader, writer)
        wire.send(b"Content-Type: auth/request\n\n")
        allowed_events: set[str] | None = None
        allowed_api: set[str] | None = None
        command = await wire.read_command()
        if command is None:
            return
        first = command[0]
        if first.startswith("userauth "):
            user, _, pw = first[len("userauth ") :].partition(":")
            known = self.users.get(user)
            if known is None or known[0] != pw:
                wire.reply("-ERR invalid")
                wire.disconnect("disconnect", None)
                await wire.close()
                return
            _, allowed_events, allowed_api = known
            extra = []
            if allowed_events is not None:
                extra.append(("Allowed-Events", ",".join(sorted(allowed_events))))
            if allowed_api is not None:
                extra.append(("Allowed-API", ",".join(sorted(allowed_api))))
            wire.reply("+OK accepted", (*extra, ("Allowed-LOG", "false")))
        elif first == f"auth {self.password}":
            wire.reply("+OK accepted")
        else:
            wire.reply("-ERR invalid")
            wire.disconnect("disconnect", None)
            await wire.close()
            return
        entry = (wire, allowed_events, allowed_api)
        self._inbound.append(entry)
        try:
            while (command := await wire.read_command()) is not None:
                first, _ = command
                if first.startswith("event "):
                    self._subscribe(wire, first, allowed_events)
                elif first.startswith("api "):
                    name = first[4:].split(" ", 1)[0]
                    if allowed_api is not None and name not in allowed_api:
                        wire.reply("-ERR permission denied")
                    else:
                        # mod_event_socket: an api that printed nothing answers this
                        wire.api_response(await self.api(first[4:]) or "-ERR no reply\n")
                elif first == "exit":
                    wire.reply("+OK bye")
                    wire.disconnect("disconnect", None)
                    break
                else:
                    wire.reply("-ERR command not found")
                await writer.drain()
        finally:
            await wire.close()
            self._inbound.remove(entry)

    def _subscribe(self, wire: _Wire, line: str, allowed: set[str] | None) -> None:
        names = line.split()[2:]
        custom = False
        for n in names:
            if custom:
                wire.customs.add(n)
            elif allowed is not None and n not in allowed:
                wire.reply("-ERR permission denied")
                return
            else:
                wire.events.add(n)
                custom = n == "CUSTOM"
        wire.reply("+OK event listener enabled plain")

    async def api(self, command: str) -> str:
        self.api_log.append(command)
        name, _, rest = command.partition(" ")
        args = rest.split(" ")
        if name == "uuid_record":
            return self._uuid_record(args)
        if name == "uuid_setvar":
            leg = self.legs.get(args[0])
            if leg is None or not leg.up:
                return "-ERR No such channel!\n"
            if len(args) > 2:
                leg.variables[args[1]] = " ".join(args[2:])
            else:
                leg.variables.pop(args[1], None)
            return "+OK\n"
        if name == "uuid_exists":  # capture caller_hangup_then_dead_channel_commands
            leg = self.legs.get(args[0])
            return "true" if leg is not None and leg.up else "false"
        if name == "uuid_getvar":
            leg = self.legs.get(args[0])
            if leg is None or not leg.up:
                return "-ERR No such channel!\n"
            return leg.variables.get(args[1], "_undef_")
        if name in ("uuid_kill", "uuid_broadcast"):
            leg = self.legs.get(args[0])
            if leg is None or not leg.up:
                return "-ERR No such channel!\n"
            if name == "uuid_kill":
                await self.hangup_leg(leg)
            return "+OK\n" if name == "uuid_kill" else "+OK Message sent\n"
        if name == "db":
            return self.dialplan.db_api(rest)
        return f"-ERR {name} Command not found!\n"

    def _uuid_record(self, args: list[str]) -> str:
        leg = self.legs.get(args[0])
        if leg is None or not leg.up:
            return "-ERR Cannot locate session!\n"
        action, path = args[1], args[2]
        if action == "start":
            vars_ = _bracket_vars(args[4]) if len(args) > 4 else {}
            self._start_recording(leg, path, vars_, leg.session)
            return "+OK Success\n"
        rec = leg.recordings.get(path)
        if action == "stop":
            if rec is None:
                return "-ERR Cannot stop record session!\n"
            self._stop_recording(leg, path, "success-maxtime", None)
            return "+OK Success\n"
        if action in ("mask", "unmask"):
            if rec is None:
                return f"-ERR Cannot {action} recording session!\n"
            rec.masked = action == "mask"
            return "+OK Success\n"
        return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"

    # -- recordings (real WAV files, header final only at RECORD_STOP) ---------------------

    def _start_recording(
        self, leg: Leg, path: str, vars_: dict[str, str], wire: _Wire | None
    ) -> None:
        stereo = (vars_.get("RECORD_STEREO") or leg.variables.get("RECORD_STEREO")) == "true"
        rec = Recording(Path(path), 2 if stereo else 1)
        rec.path.write_bytes(_wav_header(rec.channels, 0, final=False))
        leg.recordings[path] = rec
        self.emit("RECORD_START", leg, wire, Record_File_Path=path)

    def _stop_recording(self, leg: Leg, path: str, cause: str, wire: _Wire | None) -> None:
        rec = leg.recordings.pop(path)
        data_len = rec.frames * 2 * rec.channels
        with open(rec.path, "r+b") as f:
            f.write(_wav_header(rec.channels, data_len, final=True))
        self.emit("RECORD_STOP", leg, wire, Record_File_Path=path, Record_Completion_Cause=cause)

    def talk(self, leg: Leg, seconds: float, level: int = 8000) -> None:
        """``seconds`` of audio on the leg: every running recording gets it (silence if masked);
        on a stereo recording the customer is left and what they hear is right."""
        frames = int(seconds * RATE)
        for rec in leg.recordings.values():
            sample = 0 if rec.masked else level
            frame = struct.pack("<h", sample) + (
                struct.pack("<h", sample // 2) if rec.channels == 2 else b""
            )
            with open(rec.path, "ab") as f:
                f.write(frame * frames)
            rec.frames += frames

    # -- calls -------------------------------------------------------------------------------

    def new_leg(
        self,
        destination: str,
        number: str,
        *,
        socket_path: str = "consent/default",
        hide: bool = False,
        call_uuid: str | None = None,
    ) -> Leg:
        u = str(uuidlib.uuid4())
        leg = Leg(
            u,
            call_uuid or u,
            f"loopback/{destination}-b",
            number,
            destination,
            socket_path,
            "true" if hide else "false",
        )
        leg.variables.update(
            {
                "direction": "inbound",
                "uuid": u,
                "call_uuid": leg.call_uuid,
                "socket_path": socket_path,
            }
        )
        self.legs[u] = leg
        return leg

    async def hangup_leg(
        self, leg: Leg, cause: str = "NORMAL_CLEARING", wire: _Wire | None = None
    ) -> None:
        """A leg hangs up: its recordings close first (RECORD_STOP), then HANGUP_COMPLETE."""
        if not leg.up:
            return
        leg.up = False
        leg.answer_state = "hangup"
        self.emit("CHANNEL_HANGUP", leg, wire, Hangup_Cause=cause)
        leg.state = "CS_HANGUP"
        for path in list(leg.recordings):
            self._stop_recording(leg, path, "success-silence", wire)
        leg.state = "CS_REPORTING"
        self.emit("CHANNEL_HANGUP_COMPLETE", leg, wire, Hangup_Cause=cause)

    async def bridge(self, customer: Leg, agent_name: str = "agent1", **agent_vars: str) -> Leg:
        """The dialplan goes on to ``bridge``: an agent leg whose Channel-Call-UUID is the
        customer's, with the customer's exported variables; then, as captured, the customer's
        ``bridge_pre_execute_bleg_app`` runs on the agent's leg (the shipped dialplan binds the
        agents' codes there)."""
        agent = self._answered_leg(agent_name, customer)
        agent.variables.update(
            {k: customer.variables[k] for k in customer.exports if k in customer.variables}
        )
        agent.variables.update(agent_vars)  # the dial string's {callconsent_agent=…}
        self._bridged(customer, agent)
        if app := customer.variables.get("bridge_pre_execute_bleg_app"):
            data = customer.variables.get("bridge_pre_execute_bleg_data", "")
            self.dialplan.run(agent, app, data)
        return agent

    async def dial_out(self, agent: Leg, number: str) -> Leg:
        """An agent's leg (after ``callconsent_out_<campaign>``) bridges out to a customer: the
        agent's leg runs ``bridge``, so CHANNEL_BRIDGE is its event, the customer the other leg."""
        customer = self._answered_leg(number, agent)
        self._bridged(agent, customer)
        return customer

    def _answered_leg(self, name: str, other: Leg) -> Leg:
        """The far leg ``bridge`` creates: the caller's Channel-Call-UUID, answered."""
        leg = self.new_leg(name, other.number, call_uuid=other.call_uuid)
        leg.name = f"loopback/{name}-a"
        leg.answer_state, leg.state = "answered", "CS_EXCHANGE_MEDIA"
        return leg

    def _bridged(self, a: Leg, b: Leg) -> None:
        """CHANNEL_BRIDGE is the event of the leg that ran ``bridge`` (``a``)."""
        a.peer, b.peer = b, a
        self.emit(
            "CHANNEL_BRIDGE",
            a,
            Bridge_A_Unique_ID=a.uuid,
            Bridge_B_Unique_ID=b.uuid,
            Other_Leg_Unique_ID=b.uuid,
            Other_Leg_Channel_Name=b.name,
        )

    def press(self, leg: Leg, digits: str) -> None:
        """The phone on ``leg`` sends ``digits``: the leg's bindings take what they match (and
        fire the shipped dialplan's events); the rest reaches the other party."""
        self.dialplan.press(leg, digits)

    def feature_code(self, leg: Leg, cmd: str, agent: str = "7001") -> None:
        """The CUSTOM event of an agent code, fired on ``leg`` whatever is bound there (what a
        misconfigured dialplan could send: any ``cc_cmd``, from any leg)."""
        headers = {"Event-Subclass": "consent::agent_cmd", "cc_cmd": cmd, "cc_agent": agent}
        if leg.peer is not None:
            headers |= {
                "Other-Leg-Unique-ID": leg.peer.uuid,
                "Other-Leg-Channel-Name": leg.peer.name,
            }
        self.emit("CUSTOM", leg, **headers)

    def listen(self, supervisor: Leg, target: str) -> None:
        self.emit(
            "CUSTOM", supervisor, **{"Event-Subclass": "consent::listen", "cc_target": target}
        )

    async def call(self, port: int, leg: Leg, caller: Caller) -> SimCall:
        """The shipped entry extension (``callconsent_in_<campaign>`` for ``consent/…``,
        ``callconsent_out_<campaign>`` for ``outbound/…``) up to its ``socket`` app, then the
        ``socket`` app: connect to our outbound server and obey it until it exits."""
        kind, _, campaign = leg.socket_path.partition("/")
        entry = {"consent": "callconsent_in_", "outbound": "callconsent_out_"}.get(kind)
        if entry:
            with contextlib.suppress(LookupError):  # a campaign name no extension takes
                self.dialplan.enter(leg, "callconsent", entry + campaign)
        sim_call = SimCall(self, leg, caller)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            sim_call.refused = True  # "Socket Error: Connection refused"; dialplan goes on
            return sim_call
        await sim_call.run(_Wire(reader, writer))
        return sim_call


_MYEVENTS = frozenset(
    {
        "CHANNEL_EXECUTE",
        "CHANNEL_EXECUTE_COMPLETE",
        "CHANNEL_ANSWER",
        "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_UNPARK",
        "CHANNEL_STATE",
        "CHANNEL_PARK",
        "DTMF",
    }
)


#: what :attr:`FakeFreeSwitch.timeline` keeps of each event it times
_TIMED = {
    "DTMF": "DTMF-Digit",
    "CHANNEL_EXECUTE": "Application",
    "RECORD_START": "Record-File-Path",
}


def _bracket_vars(text: str) -> dict[str, str]:
    inner = text.strip().removeprefix("{").removesuffix("}")
    return dict(item.split("=", 1) for item in inner.split(",") if "=" in item)


def _wav_header(channels: int, data_len: int, *, final: bool) -> bytes:
    """The 44-byte header FreeSWITCH writes: sizes 0 (RIFF 8) until the file is closed."""
    riff = 36 + data_len if final else 8
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, RATE, RATE * 2 * channels, 2 * channels, 16)
        + b"data"
        + struct.pack("<I", data_len if final else 0)
    )


class SimCall:
    """The ``socket`` app on one channel: FreeSWITCH's side of our outbound session."""

    def __init__(self, fs: FakeFreeSwitch, leg: Leg, caller: Caller) -> None:
        self.fs, self.leg, self.caller = fs, leg, caller
        self.answers = list(caller.answers)
        self.refused = False
        self.exited = False
        self.lingering: str | None = None
        self.commands: list[str] = []
        self.executed: list[tuple[str, str]] = []
        self.socket_app = str(uuidlib.uuid4())

    async def run(self, wire: _Wire) -> None:
        leg = self.leg
        command = await wire.read_command()
        assert command is not None and command[0] == "connect", command
        headers = [
            (
                k,
                {
                    "Unique-ID": leg.uuid,
                    "Channel-Unique-ID": leg.uuid,
                    "Caller-Unique-ID": leg.uuid,
                    "Channel-Call-UUID": leg.call_uuid,
                    "variable_uuid": leg.uuid,
                    "variable_call_uuid": leg.call_uuid,
                    "Channel-Caller-ID-Number": leg.number,
                    "Caller-Caller-ID-Number": leg.number,
                    "Caller-Orig-Caller-ID-Number": leg.number,
                    "Channel-Orig-Caller-ID-Number": leg.number,
                    "Caller-ANI": leg.number,
                    "Channel-ANI": leg.number,
                    "Caller-Privacy-Hide-Number": leg.hide,
                    "Channel-Privacy-Hide-Number": leg.hide,
                    "variable_current_application_data": _socket_data(leg),
                }.get(k, v),
            )
            for k, v in CONNECT_TEMPLATE
        ]
        extra = [
            (f"variable_{k}", v)
            for k, v in leg.variables.items()
            if f"variable_{k}" not in dict(headers)
        ]
        at = next(i for i, (k, _) in enumerate(headers) if k == "Content-Type")
        headers[at:at] = extra
        wire.send(("".join(f"{k}: {fs_encode(v)}\n" for k, v in headers) + "\n").encode())
        leg.session = wire
        try:
            await self._serve(wire)
        finally:
            leg.session = None

    async def _serve(self, wire: _Wire) -> None:
        leg = self.leg
        while (command := await wire.read_command()) is not None:
            first, fields = command
            self.commands.append(first)
            if first == "myevents":
                wire.events |= _MYEVENTS
                wire.reply("+OK Events Enabled")
            elif first.startswith("event "):
                self.fs._subscribe(wire, first, None)
            elif first.startswith("linger"):
                self.lingering = first[7:] or "-1"
                wire.reply("+OK will linger" + (f" {first[7:]} seconds" if first[7:] else ""))
            elif first.startswith("sendmsg"):
                wire.reply("+OK")  # even on a dead channel
                if leg.up:
                    await self._execute(wire, fields)
            elif first.startswith("api "):
                wire.hold_events()
                wire.api_response(await self.fs.api(first[4:]))
                wire.release_events()
            elif first == "resume":
                wire.reply("+OK")
            elif first == "exit":
                wire.reply("+OK bye")
                wire.disconnect("disconnect", leg)
                self.exited = True
                break
            else:
                wire.reply("-ERR command not found")
            with contextlib.suppress(ConnectionError):
                await wire.writer.drain()
        await wire.close()

    async def _execute(self, wire: _Wire, fields: dict[str, str]) -> None:
        leg, fs = self.leg, self.fs
        app, arg = fields.get("execute-app-name", ""), fields.get("execute-app-arg", "")
        self.executed.append((app, arg))
        fs.sendmsg_log.append((app, arg))
        app_uuid = fields.get("Event-UUID") or str(uuidlib.uuid4())
        info = {"Application": app, "Application-Data": arg, "Application-UUID": app_uuid}
        if fs.frame_s:
            await asyncio.sleep(fs.frame_s)  # the application runs at the next media frame
            if not leg.up:
                return
        fs.emit("CHANNEL_EXECUTE", leg, wire, **_h(info))
        response = "_none_"
        if app == "answer":
            leg.answer_state = "answered"
            fs.emit("CHANNEL_ANSWER", leg, wire)
        elif app in ("set", "export"):
            k, _, v = arg.partition("=")
            if v:
                leg.variables[k] = v
            else:
                leg.variables.pop(k, None)
            if app == "export":
                leg.exports.add(k)
        elif app == "unset":
            leg.variables.pop(arg, None)
        elif app == "playback":
            response = await self._playback(wire, arg)
            if response == "hangup":
                return
        elif app == "play_and_get_digits":
            if await self._pagd(wire, arg, info) == "hangup":
                return
        elif app == "record_session":
            path, _, rest = arg.partition(" ")
            fs._start_recording(leg, path, _bracket_vars(rest) if rest else {}, wire)
        elif app == "bind_digit_action":
            fs.dialplan.bind(leg, arg)
        fs.emit(
            "CHANNEL_EXECUTE_COMPLETE", leg, wire, **_h(info | {"Application-Response": response})
        )

    async def _playback(self, wire: _Wire, path: str) -> str:
        leg, fs = self.leg, self.fs
        if not _is_file(path):
            return "FILE NOT FOUND"
        terminators = leg.variables.get("playback_terminators", "*")
        nxt = self.answers[0] if self.answers else None
        fs.emit("PLAYBACK_START", leg, wire)
        if nxt == "hangup":
            self.answers.pop(0)
            await self._hangup_in_app(wire, {"Application": "playback", "Application-Data": path})
            return "hangup"
        if nxt and nxt != "hangup" and terminators != "none" and nxt in terminators:
            self.answers.pop(0)
            fs.emit("DTMF", leg, wire, DTMF_Digit=nxt, DTMF_Duration="2000", DTMF_Source="UNKNOWN")
            leg.variables["playback_terminator_used"] = nxt
        fs.emit("PLAYBACK_STOP", leg, wire)
        return "FILE PLAYED"

    async def _pagd(self, wire: _Wire, arg: str, info: dict[str, str]) -> str | None:
        leg, fs = self.leg, self.fs
        args = arg.split(" ")
        prompt, var, regex = args[5], args[7], args[8]
        answer = self.answers.pop(0) if self.answers else None
        for k in (var, "read_result"):
            leg.variables.pop(k, None)
        exists = _is_file(prompt)
        if exists:
            fs.emit("PLAYBACK_START", leg, wire)
        if answer == "hangup":
            await self._hangup_in_app(wire, info)
            return "hangup"
        dtmf = {"DTMF_Duration": "2000", "DTMF_Source": "UNKNOWN"}
        if answer is not None and self.caller.barge:
            fs.emit("DTMF", leg, wire, DTMF_Digit=answer, **dtmf)
        if exists:
            fs.emit("PLAYBACK_STOP", leg, wire)
        if answer is not None and not self.caller.barge:
            fs.emit("DTMF", leg, wire, DTMF_Digit=answer, **dtmf)
        if answer is not None and re.fullmatch(regex.strip("^$"), answer):
            leg.variables[var] = answer
            leg.variables["read_result"] = "success"
        else:
            if answer is not None:
                leg.variables[f"{var}_invalid"] = answer
            fs.emit("PLAYBACK_START", leg, wire)  # the invalid-input file (silence_stream)
            fs.emit("PLAYBACK_STOP", leg, wire)
            leg.variables["read_result"] = "failure"
        return None

    async def _hangup_in_app(self, wire: _Wire, info: dict[str, str]) -> None:
        """The captured order of a caller hanging up while an application runs."""
        leg, fs = self.leg, self.fs
        leg.up = False
        leg.answer_state = "hangup"
        cause = {"Hangup-Cause": "NORMAL_CLEARING"}
        fs.emit("CHANNEL_HANGUP", leg, wire, **_h(cause))
        fs.emit("PLAYBACK_STOP", leg, wire, **_h(cause))
        fs.emit(
            "CHANNEL_EXECUTE_COMPLETE",
            leg,
            wire,
            **_h(info | {"Application-Response": "_none_"} | cause),
        )
        fs.emit("CHANNEL_UNPARK", leg, wire, **_h(cause))
        socket = {
            "Application": "socket",
            "Application-Data": _socket_data(leg),
            "Application-Response": "_none_",
            "Application-UUID": self.socket_app,
        }
        fs.emit("CHANNEL_EXECUTE_COMPLETE", leg, wire, **_h(socket | cause))
        leg.state = "CS_HANGUP"
        fs.emit("CHANNEL_STATE", leg, wire, **_h(cause))
        for path in list(leg.recordings):
            fs._stop_recording(leg, path, "success-silence", wire)
        leg.state = "CS_REPORTING"
        fs.emit("CHANNEL_STATE", leg, wire, **_h(cause))
        fs.emit("CHANNEL_HANGUP_COMPLETE", leg, wire, **_h(cause))
        if self.lingering is not None:
            wire.disconnect("linger", leg, self.lingering)
        else:
            wire.disconnect("disconnect", leg)
            await wire.close()


def _socket_data(leg: Leg) -> str:
    return f"{SOCKET_ADDR}/{leg.socket_path} async full"


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _h(fields: dict[str, str]) -> dict[str, str]:
    """Header names as keyword arguments (``Application-UUID`` -> ``Application_UUID``)."""
    return {k.replace("-", "_"): v for k, v in fields.items()}
