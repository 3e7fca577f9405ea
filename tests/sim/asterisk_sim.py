"""A simulated Asterisk 22, built from the captures in ``tests/fixtures/asterisk*/``.

It speaks FastAGI (as a client, :mod:`asterisk_sim_agi`) and AMI (as a server,
:mod:`asterisk_sim_ami`) over real sockets, runs *our shipped dialplan*
(``dialplan/asterisk/*.conf``, rendered for the test's ports) with a small interpreter
(:mod:`asterisk_sim_dialplan`), and models what the captures show about channels:

* variables: ``__X`` is inherited by channels a leg creates and read back as ``X``;
  ``GET VARIABLE __X`` answers ``200 result=0``;
* MixMonitor: the file exists at once with a zero-size WAV header that is written only when the
  file closes, 1–15 ms after the channel is destroyed (which waits for our AGI socket to close)
  or after StopMixMonitor; ``.raw`` with ``D`` is headerless interleaved stereo; a muted stretch
  is zeros; ``EXEC StopMixMonitor <id>`` on another leg answers 0 and does nothing;
* bridged calls: a Dial ``b()`` pre-dial and ``U()`` subroutine on the agent leg, feature
  codes from our ``[applicationmap]`` include (``self`` runs on the pressing leg, ``peer`` on
  the other one, with ``DYNAMIC_WHO_ACTIVATED``), ``BRIDGEPEER``;
* AMI: ``Hangup`` per channel (no ``MixMonitorStop`` on hangup), ``MixMonitorStart`` without
  ID or file, ``ChanSpyStart``/``Stop``.

Time is scaled: ``speed`` simulated seconds pass per real second, so a 5 s prompt takes
0.1 s at the default speed of 50. A caller is a script of :class:`Act` s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import math
import random
import re
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asterisk_sim_agi import AgiCall
from asterisk_sim_ami import AmiUser, SimAmi
from asterisk_sim_dialplan import Dialplan, Feature, parse_applicationmap

PRESENTATIONS = ("allowed_not_screened", "prohib_not_screened", "unavailable")


@dataclass(frozen=True)
class Act:
    """What a party does: ``press`` a key (or a feature code) or ``hangup``, ``at`` simulated
    seconds into ``when``: a prompt id (``consent``), ``wait`` (WAIT FOR DIGIT), or ``talk``
    (after the previous act, while the call is connected)."""

    what: str
    when: str
    at: float = 0.0
    digit: str = ""


def press(digit: str, when: str = "consent", at: float = 1.2) -> Act:
    return Act("press", when, at, digit)


def hangup(when: str = "talk", at: float = 1.0) -> Act:
    return Act("hangup", when, at)


class SimMixMonitor:
    _ids = itertools.count(0x7F23D8002250, 0x1E0)

    def __init__(self, chan: SimChannel, path: str, options: str) -> None:
        self.chan = chan
        self.id = hex(next(self._ids))
        self.path = Path(path)
        self.stereo = "D" in re.sub(r"\([^)]*\)", "", options)
        self.var = m.group(1) if (m := re.search(r"i\(([A-Za-z0-9_]+)\)", options)) else None
        self.beep = "B" in re.sub(r"\([^)]*\)", "", options)
        self.muted = False
        self.active = True
        self.frames = 0
        self.muted_frames = 0
        self.lost_writes = 0
        self._task: asyncio.Task[None] | None = None
        if chan.sim.unwritable_spool:  # Asterisk logs an error; the monitor exists all the same
            return
        with open(self.path, "wb") as f:
            if self.path.suffix == ".wav":
                f.write(wav_header(0, 1, final=False))  # sizes stay 0 until it closes
        self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        sim = self.chan.sim
        tone = b"".join(
            struct.pack("<h", int(3000 * math.sin(2 * math.pi * 400 * i / 8000)))
            for i in range(160)
        )
        while self.active:
            await asyncio.sleep(0.02)
            if not self.active:
                break
            frames = max(1, int(0.02 * sim.speed * 50))  # 20 ms frames
            chunk = (b"\x00" * 320 if self.muted else tone) * frames
            if self.stereo:
                chunk = b"".join(chunk[i : i + 2] * 2 for i in range(0, len(chunk), 2))
            self._append(chunk)
            self.frames += frames
            self.muted_frames += frames if self.muted else 0

    def _append(self, chunk: bytes) -> None:
        """A full disk loses frames and the monitor goes on, as Asterisk's (format_wav's
        ``Bad write`` warning; MixMonitor ignores the result of ``ast_writestream``)."""
        try:
            with open(self.path, "ab") as f:
                f.write(chunk)
        except OSError:
            self.lost_writes += 1

    def close(self) -> None:
        """The file closes: the WAV header is written 1–15 ms later (capture s3)."""
        if not self.active:
            return
        self.active = False
        if self._task is not None:
            self._task.cancel()
        asyncio.get_running_loop().call_later(random.uniform(0.001, 0.015), self._finalize)

    def _finalize(self) -> None:
        if self.path.suffix != ".wav" or not self.path.exists():
            return
        size = self.path.stat().st_size
        if size < 44:  # the disk was full before even the header fitted
            return
        with open(self.path, "r+b") as f:
            f.write(wav_header(size - 44, 1))


def wav_header(data_size: int, channels: int = 1, final: bool = True) -> bytes:
    """The 44-byte header Asterisk writes (8 kHz 16-bit); sizes are 0 until the file closes."""
    riff = data_size + 36 if final else 0
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, 8000, 16000 * channels, 2 * channels, 16)
        + b"data"
        + struct.pack("<I", data_size if final else 0)
    )


class SimChannel:
    def __init__(
        self,
        sim: SimAsterisk,
        name: str,
        uid: str,
        linkedid: str,
        *,
        callerid_num: str = "",
        callerid_name: str = "",
        pres: str = "allowed_not_screened",
        language: str = "en",
        context: str = "",
        exten: str = "s",
        script: list[Act] | None = None,
    ) -> None:
        self.sim = sim
        self.name, self.uid, self.linkedid = name, uid, linkedid
        self.callerid_num, self.callerid_name, self.pres = callerid_num, callerid_name, pres
        self.language, self.context, self.exten = language, context, exten
        self.state = "Up"
        self.vars: dict[str, str] = {}
        self.inherit: dict[str, int] = {}
        self.alive = True
        self.destroyed = False
        self.gone = asyncio.Event()
        self.script: deque[Act] = deque(script or [])
        self.mixmonitors: dict[str, SimMixMonitor] = {}
        self.peer: SimChannel | None = None
        self.local_half: SimChannel | None = None  # the other half of a Local channel
        self.agi: AgiCall | None = None
        self.heard: list[str] = []  # prompts played to this channel
        self.heard_paths: list[str] = []
        self.heard_dtmf: list[str] = []
        self.events: list[tuple[object, ...]] = []
        self.stopped_without_id = 0

    # -- variables and expressions ----------------------------------------------------------

    def set_var(self, name: str, value: str) -> None:
        level = 2 if name.startswith("__") else 1 if name.startswith("_") else 0
        bare = name.lstrip("_")
        self.vars[bare] = value
        self.inherit[bare] = level

    def get_var(self, name: str) -> str | None:
        if name.startswith("_"):
            return None  # GET VARIABLE __CONSENT_STATUS answers 200 result=0 (capture s1)
        if name == "UNIQUEID":
            return self.uid
        if name == "EPOCH":
            return str(int(time.time()))
        if name == "BRIDGEPEER":
            return self.peer.name if self.peer is not None and self.peer.alive else None
        return self.vars.get(name)

    def inherit_from(self, parent: SimChannel) -> None:
        for name, level in parent.inherit.items():
            if level:
                self.vars[name] = parent.vars[name]
                self.inherit[name] = 2 if level == 2 else 0

    def evaluate(self, text: str) -> str:
        from asterisk_sim_dialplan import substitute

        return substitute(self, text)

    def function(self, name: str, args: str) -> str:
        if name == "CHANNEL":
            return {
                "linkedid": self.linkedid,
                "name": self.name,
                "state": self.state,
                "language": self.language,
                "uniqueid": self.uid,
            }.get(args, "")
        if name == "CALLERID":
            return {
                "num": self.callerid_num,
                "name": self.callerid_name[:255],
                "num-pres": self.pres,
            }.get(args, "")
        if name == "BASE64_ENCODE":
            return base64.b64encode(args.encode()).decode()
        if name == "BASE64_DECODE":
            return base64.b64decode(args).decode("utf-8", "replace")
        if name == "MIXMONITOR":
            mon_id, _, field_ = args.partition(",")
            mon = self.mixmonitors.get(mon_id)
            return str(mon.path) if mon and mon.active and field_ == "filename" else ""
        if name == "IMPORT":
            other, _, var = args.partition(",")
            found = self.sim.find_channel(other)
            return (found.get_var(var) or "") if found else ""
        if name == "REGEX":
            m = re.match(r'^"(.*)"\s?(.*)$', args)
            return "1" if m and re.search(m.group(1), m.group(2)) else "0"
        if name == "IF":
            cond, _, branches = args.partition("?")
            yes, _, no = branches.partition(":")
            return yes if cond.strip() not in ("", "0") else no
        return ""

    # -- media and scripts ----------------------------------------------------------------

    def next_act(self, when: str) -> Act | None:
        return self.script[0] if self.script and self.script[0].when == when else None

    def take_act(self) -> Act:
        return self.script.popleft()

    async def sleep(self, seconds: float) -> float:
        """Sleep ``seconds`` of simulated time, or less if the channel hangs up."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.alive:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), max(seconds, 0) / self.sim.speed)
        return (loop.time() - start) * self.sim.speed

    # -- MixMonitor ---------------------------------------------------------------------------

    def start_mixmonitor(self, path: str, options: str) -> SimMixMonitor:
        mon = SimMixMonitor(self, path, options)
        self.mixmonitors[mon.id] = mon
        if mon.var:
            self.set_var(mon.var, mon.id)
        self.set_var("MIXMONITOR_FILENAME", path)
        self.sim.ami.emit("MixMonitorStart", self.ami_fields())  # neither ID nor file (s1)
        return mon

    def mixmonitor(self, mon_id: str | None) -> SimMixMonitor | None:
        return self.mixmonitors.get(mon_id or "")

    def stop_mixmonitor(self, mon_id: str | None) -> bool:
        if mon_id is None:
            self.stopped_without_id += 1
            targets = [m for m in self.mixmonitors.values() if m.active]
        else:
            mon = self.mixmonitors.get(mon_id)
            targets = [mon] if mon is not None and mon.active else []
        for mon in targets:
            mon.close()
        return bool(targets)

    def ami_fields(self) -> list[tuple[str, str]]:
        peer = self.peer
        return [
            ("Channel", self.name),
            ("ChannelState", "6" if self.state == "Up" else "4"),
            ("ChannelStateDesc", self.state),
            ("CallerIDNum", self.callerid_num or "<unknown>"),
            ("CallerIDName", (self.callerid_name or "<unknown>").replace("\n", "\\n")),
            ("ConnectedLineNum", peer.callerid_num if peer else "<unknown>"),
            ("ConnectedLineName", peer.callerid_name if peer else "<unknown>"),
            ("Language", self.language),
            ("AccountCode", ""),
            ("Context", self.context),
            ("Exten", self.exten),
            ("Priority", "1"),
            ("Uniqueid", self.uid),
            ("Linkedid", self.linkedid),
        ]


@dataclass
class SimCall:
    customer_phone: SimChannel
    customer: SimChannel  # the screened leg: consent AGI, MixMonitor
    agent: SimChannel | None = None
    gosub_retval: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SimAsterisk:
    """The PBX: channels, the shipped dialplan, FastAGI client, AMI server."""

    def __init__(self, *, speed: float = 50.0, ami_users: dict[str, AmiUser] | None = None) -> None:
        self.speed = speed
        self.dialplan = Dialplan({})
        self.features: dict[str, Feature] = {}
        self.ami = SimAmi(self, users=ami_users or {})
        self.channels: dict[str, SimChannel] = {}
        self.agi_sighup = True  # AGISIGHUP (default yes)
        self.agi_exit_on_hangup = False  # AGIEXITONHANGUP (default no)
        self.unwritable_spool = False  # MixMonitor cannot open its file
        self.exec_log: list[tuple[str, str, str]] = []
        self.agi_sent: list[bytes] = []  # every environment and reply sent, for conformance
        self.spied: list[tuple[str, str]] = []  # (listener, customer) pairs that were heard
        self._uid = itertools.count(74)
        self._chan = itertools.count(0x25)
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        await self.ami.start()

    def load_dialplan(self, directory: Path) -> None:
        """Our shipped files, as rendered for this test (its FastAGI port)."""
        self.dialplan = Dialplan.parse((directory / "extensions_callconsent.conf").read_text())
        self.features = parse_applicationmap((directory / "features_callconsent.conf").read_text())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.ami.stop()

    # -- channels ---------------------------------------------------------------------------

    def new_channel(
        self,
        base: str,
        leg: int,
        linkedid: str | None = None,
        half_of: SimChannel | None = None,
        **kw: object,
    ) -> SimChannel:
        """``half_of``: the ;1 half of the same Local channel (one number, one fate)."""
        uid = f"1795348625.{next(self._uid)}"
        number = half_of.name.rsplit(";", 1)[0] if half_of else f"{base}-{next(self._chan):08x}"
        chan = SimChannel(self, f"{number};{leg}", uid, linkedid or uid, **kw)  # type: ignore[arg-type]
        if half_of is not None:
            chan.local_half, half_of.local_half = half_of, chan
        self.channels[uid] = chan
        return chan

    def find_channel(self, name_or_uid: str) -> SimChannel | None:
        found = self.channels.get(name_or_uid)
        if found is None:
            found = next((c for c in self.channels.values() if c.name == name_or_uid), None)
        return found if found is not None and not found.destroyed else None

    def hangup(self, chan: SimChannel) -> None:
        if not chan.alive:
            return
        chan.alive = False
        chan.gone.set()
        if chan.agi is None:
            self.destroy(chan)  # else when our server closes the AGI socket (linger)
        peer = chan.peer
        if peer is not None and peer.alive:
            self.hangup(peer)  # the bridge ends: Dial hangs up the other leg
        half = chan.local_half
        if half is not None and half.alive:
            self.hangup(half)  # a Local channel's halves go together (capture s2: ;1 and ;2)

    def consent_asked(self) -> bool:
        """The newest customer leg has been through the consent dialogue: its AGI set
        ``CONSENT_STATUS`` and has ended. (``agi is None`` alone is also true before the AGI
        starts, which let tests run ahead of the call.)"""
        legs = self.customers()
        return bool(legs) and legs[-1].agi is None and "CONSENT_STATUS" in legs[-1].vars

    def customers(self) -> list[SimChannel]:
        return [c for c in self.channels.values() if c.context in ("cc-inbound", "cc-trunk")]

    async def wait_until(self, condition: Callable[[], object], wait_s: float = 5.0) -> None:
        for _ in range(int(wait_s / 0.005)):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise TimeoutError("the simulated call never got there")

    def hangup_soon(self, chan: SimChannel) -> None:
        asyncio.get_running_loop().call_soon(self.hangup, chan)

    def destroy(self, chan: SimChannel) -> None:
        if chan.destroyed:
            return
        chan.destroyed = True
        for mon in chan.mixmonitors.values():
            mon.close()  # no MixMonitorStop event on hangup (capture s1)
        self.ami.emit(
            "Hangup", [*chan.ami_fields(), ("Cause", "16"), ("Cause-txt", "Normal Clearing")]
        )

    async def run_agi(self, chan: SimChannel, url: str, args: tuple[str, ...] = ()) -> str:
        status = await AgiCall(chan, url, args).run()
        if not chan.alive:
            self.destroy(chan)
        return status

    # -- calls ------------------------------------------------------------------------------

    async def inbound(
        self,
        campaign: str,
        script: list[Act],
        *,
        number: str = "+4915112345678",
        name: str = "Customer",
        pres: str = "allowed_not_screened",
        language: str = "en",
        agent_script: list[Act] | None = None,
    ) -> SimCall:
        """A call into ``Gosub(callconsent-inbound,s,1(<campaign>))``, then (if given) to an
        agent through ``Dial(…,b(callconsent-agent-predial^s^1)U(callconsent-agent^s^1))``."""
        phone = self.new_channel(
            "Local/cust@cc-inbound", 1, callerid_num=number, callerid_name=name
        )
        cust = self.new_channel(
            "Local/cust@cc-inbound",
            2,
            phone.uid,
            half_of=phone,
            callerid_num=number,
            callerid_name=name,
            pres=pres,
            language=language,
            context="cc-inbound",
            exten="cust",
            script=script,
        )
        call = SimCall(phone, cust)
        call.gosub_retval = await self.dialplan.gosub(cust, "callconsent-inbound", (campaign,))
        if cust.alive and agent_script is not None:
            agent = self.new_channel(
                "Local/agent-7001@cc-agents", 1, cust.linkedid, callerid_num="cust"
            )
            agent.inherit_from(cust)
            agent.script.extend(agent_script)
            call.agent = agent
            await self.dialplan.gosub(agent, "callconsent-agent-predial")  # Dial b()
            await self.dialplan.gosub(agent, "callconsent-agent")  # Dial U(): it answered
            if agent.alive and cust.alive:
                cust.peer, agent.peer = agent, cust
        await self._talk(call)
        return call

    async def outbound(
        self,
        campaign: str,
        agent_label: str,
        number: str,
        customer_script: list[Act],
        agent_script: list[Act],
    ) -> SimCall:
        """An agent dials out: ``Gosub(callconsent-outbound,s,1(…))`` on the agent's channel,
        then ``Dial(<trunk>/<number>,,U(callconsent-answer^s^1))``."""
        agent = self.new_channel(
            "Local/7001@cc-phones", 2, callerid_num="7001", context="from-agents", exten=number
        )
        agent.script.extend(agent_script)
        await self.dialplan.gosub(agent, "callconsent-outbound", (campaign, agent_label, number))
        cust = self.new_channel(
            "Local/out@cc-trunk",
            1,
            agent.linkedid,
            callerid_num=number,
            context="cc-trunk",
            exten=number,
            script=customer_script,
        )
        cust.inherit_from(agent)
        call = SimCall(agent, cust, agent)
        await self.dialplan.gosub(cust, "callconsent-answer")  # U() on the answered callee
        if cust.alive and agent.alive:
            cust.peer, agent.peer = agent, cust
        await self._talk(call)
        return call

    async def _talk(self, call: SimCall) -> None:
        """The connected call: each party's ``talk`` acts, then the customer hangs up."""
        parties = [call.customer] + (
            [call.agent] if call.agent is not None and call.agent is not call.customer else []
        )
        await asyncio.gather(*(self._act(p) for p in parties))
        self.hangup(call.customer)
        call.done.set()

    async def _act(self, chan: SimChannel) -> None:
        while chan.alive and chan.script:
            act = chan.script[0]
            if act.when != "talk":
                chan.script.popleft()  # meant for a prompt that never played
                continue
            await chan.sleep(act.at)
            if not chan.alive:
                return
            chan.script.popleft()
            if act.what == "hangup":
                self.hangup(chan)
                return
            await self.feature(chan, act.digit)

    async def feature(self, chan: SimChannel, code: str) -> bool:
        """DTMF ``code`` on ``chan`` in a bridge: run the feature if it is enabled there."""
        feature = self.features.get(code)
        enabled = (chan.get_var("DYNAMIC_FEATURES") or "").split("#")
        if feature is None or feature.name not in enabled:
            chan.events.append(("dtmf", code))
            return False
        target = chan if feature.activation == "self" else chan.peer
        if target is None or not target.alive:
            return False
        target.set_var("DYNAMIC_FEATURENAME", feature.name)
        target.set_var("DYNAMIC_WHO_ACTIVATED", chan.name)
        chan.events.append(("feature", feature.name, target.name))
        if feature.app == "AGI":
            await self.run_agi(target, feature.data)
        else:  # Gosub(context,s,1(args)), as app_stack runs it
            m = re.match(r"^([\w-]+),s,1(?:\((.*)\))?$", feature.data)
            assert m is not None, feature.data
            args = tuple(m.group(2).split(",")) if m.group(2) else ()
            await self.dialplan.gosub(target, m.group(1), args)
        return True

    async def listen(self, customer: SimChannel) -> bool:
        """A supervisor runs ``Gosub(callconsent-listen,s,1(<uniqueid>))``; True if heard."""
        spy = self.new_channel("Local/spy@cc-super", 2, callerid_num="7000")
        before = len(self.spied)
        task = asyncio.get_running_loop().create_task(
            self.dialplan.gosub(spy, "callconsent-listen", (customer.uid,))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        for _ in range(50):
            await asyncio.sleep(0.005)
            if len(self.spied) > before or task.done():
                break
        spy.listen_task = task  # type: ignore[attr-defined]
        return len(self.spied) > before

    async def chanspy(self, spy: SimChannel, target_uid: str, options: str) -> None:
        """``ChanSpy(<uniqueid>,uEqSg(<group>))``: only a channel whose SPYGROUP holds the
        group is heard; with ``S`` it returns at once otherwise (capture s5)."""
        target = self.find_channel(target_uid)
        group = m.group(1) if (m := re.search(r"g\(([^)]*)\)", options)) else ""
        groups = (target.get_var("SPYGROUP") or "").split(":") if target else []
        if target is None or not target.alive or (group and group not in groups):
            return
        fields = [(f"Spyer{k}", v) for k, v in spy.ami_fields()] + [
            (f"Spyee{k}", v) for k, v in target.ami_fields()
        ]
        self.spied.append((spy.uid, target.uid))
        self.ami.emit("ChanSpyStart", fields)
        await asyncio.wait(
            [asyncio.ensure_future(spy.gone.wait()), asyncio.ensure_future(target.gone.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        self.ami.emit("ChanSpyStop", fields)
        self.hangup(spy)
