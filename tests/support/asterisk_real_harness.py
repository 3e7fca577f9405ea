"""The daemon against the real Asterisk of :mod:`asterisk_real`: callconsent's App on SQLite in a
temp dir, our FastAGI server and write=call AMI user (and, opt-in, the write=system one), and an
observer AMI connection (the lab's write=all user) that originates the test calls, presses
keys, and collects the events the tests assert on.

Also what the tests need to judge audio: :func:`tone_seconds` measures how long a test tone
(each party speaks its own frequency, see ``asterisk_real.SOUNDS``) is heard in a recording.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from asterisk_harness import AGENT_PROMPTS, SinkSpy, StoreView
from asterisk_real import Lab, free_port, from_environment, open_lab, tone_wav, why_not_reachable
from asterisk_real_capture import AgiTap, AmiTap, Transcript
from panoramisk.message import Message
from pbx_account import require_unprivileged

from agi.adapter import AsteriskOptions
from agi.ami import AmiClient, AmiError, AmiUnavailable
from agi.service import AsteriskService
from callconsent import config as config_mod
from callconsent.app import App
from consent_ivr.policy import PROMPT_IDS
from recorder.store.models import Call

# short prompts keep the calls short; the real ones are built by `callconsent prompts build`
DURATIONS = {"consent": 2.5, "notice": 1.5, "thanks": 1.0, "declined": 1.0, "no_input": 1.0}
PROMPT_HZ = 1000  # the consent IVR's prompts
WHISPER_HZ = 1200  # agent-status-* (what the agent is told when the call is bridged)
AGENT_TONE_HZ = 1600  # agent-done / agent-refused
SCENARIO_LIMIT_S = 180  # a stuck test call is hung up rather than left on the shared PBX
Hz = {"caller": 440, "agent": 660, "wait": 880, "beep": 1400}


def size(path: str | Path) -> int:
    return os.stat(path).st_size


def lab_or_skip() -> Iterator[Lab]:
    """The body of each realpbx module's ``lab`` fixture: skips with the reason, or yields
    the lab with our files loaded (and restores the PBX's files afterwards)."""
    target = from_environment()
    reason = why_not_reachable(target)
    if reason is not None or target is None:
        pytest.skip(reason)
    require_unprivileged(target.port, "asterisk")  # as in production (issue 14, point 7)
    with open_lab(target) as lab:
        yield lab


@dataclass
class Real(StoreView):
    lab: Lab
    app: App
    service: AsteriskService
    observer: AmiClient
    sink: SinkSpy
    events: list[Message] = field(default_factory=list)
    scratch: Path = Path()  # a directory Asterisk may write into (the agent's ear)
    tokens: list[str] = field(default_factory=list)

    async def originate(
        self,
        channel: str,
        context: str,
        exten: str,
        variables: dict[str, str],
        caller_id: str = '"Customer" <+4915112345678>',
    ) -> str:
        """Start a test call; returns its token (``__CCTOKEN``, inherited by every leg). The
        call's linkedid is ``cct-<token>`` (our ChannelId): :meth:`hang_up_leftovers` finds
        every leg of it by that."""
        token = secrets.token_hex(6)
        self.tokens.append(token)
        await self.observer.action(
            "Originate",
            Channel=channel,
            ChannelId=f"cct-{token}",
            OtherChannelId=f"cct-{token}-2",
            Context=context,
            Exten=exten,
            Priority="1",
            Async="true",
            Timeout="30000",
            CallerID=caller_id,
            Variable=[f"__CCTOKEN={token}", *(f"{k}={v}" for k, v in variables.items())],  # type: ignore[arg-type]
        )
        return token

    async def call(
        self,
        script: str,
        *,
        campaign: str = "sales",
        agent: str = "",
        talk: float = 2.0,
        **variables: str,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """An inbound test call to its end; returns the CCTest and CCTestEnd events' fields."""
        token = await self.inbound(script, campaign=campaign, agent=agent, talk=talk, **variables)
        return await self.finished(token)

    async def inbound(
        self, script: str, *, campaign: str = "sales", agent: str = "", talk: float = 2.0, **kw: str
    ) -> str:
        """Start an inbound test call: the customer's phone runs ``[cct-phone] <script>``."""
        variables = {"CAMPAIGN": campaign, "AGENT": agent, "HOLD": "4", "TALK": str(talk), **kw}
        return await self.originate("Local/cust@cct-in/n", "cct-phone", script, variables)

    async def finished(
        self, token: str, wait_s: float = 90
    ) -> tuple[dict[str, str], dict[str, str]]:
        end = await self.event("CCTestEnd", token, wait_s)
        started = self.find("CCTest", token)
        await asyncio.sleep(0.3)  # the Hangup event, then the closure (header 1-15 ms later)
        await self.service.adapter.drain(5.0)
        return (fields(started) if started else {}), fields(end)

    def find(self, name: str, token: str = "", **match: str) -> Message | None:
        return next(iter(self.find_all(name, token, **match)), None)

    def find_all(self, name: str, token: str = "", **match: str) -> list[Message]:
        """Events named ``name`` (a UserEvent's name, or an AMI event's), in arrival order."""
        out = []
        for m in self.events:
            if name not in (m.get("UserEvent"), m.get("Event")):
                continue
            if token and m.get("Token") != token:
                continue
            if all(str(m.get(k, "")) == v for k, v in match.items()):
                out.append(m)
        return out

    async def event(self, name: str, token: str = "", wait_s: float = 30, **match: str) -> Message:
        for _ in range(int(wait_s / 0.05)):
            found = self.find(name, token, **match)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {name} {match or ''} for call {token} within {wait_s} s")

    async def until(
        self, condition: Callable[[], object], wait_s: float = 10, what: str = ""
    ) -> None:
        for _ in range(int(wait_s / 0.05)):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"not within {wait_s} s: {what}")

    async def press(self, channel: str, keys: str) -> None:
        """The phone on ``channel`` sends ``keys`` (AMI PlayDTMF: out of that channel, so the
        other half of its Local pair receives them, as from a real phone)."""
        for key in keys:
            # Async: false, or panoramisk reads "…successfully queued" as an event list's start
            await self.observer.action(
                "PlayDTMF", Channel=channel, Digit=key, Duration="120", Async="false"
            )
            await asyncio.sleep(0.25)

    async def hangup(self, channel: str) -> None:
        await self.observer.action("Hangup", Channel=channel)

    async def hang_up_leftovers(self) -> list[str]:
        """Hang up every channel of our test calls still up (a failed test must not leave a
        call running on the shared PBX); returns their names."""
        ours = {f"cct-{t}" for t in self.tokens}
        gone = {str(m.get("Uniqueid")) for m in self.find_all("Hangup")}
        left = [
            m
            for m in self.find_all("Newchannel")
            if m.get("Linkedid") in ours and str(m.get("Uniqueid")) not in gone
        ]
        for m in left:
            with contextlib.suppress(AmiError, AmiUnavailable, TimeoutError):
                await self.observer.action("Hangup", Channel=str(m["Uniqueid"]))
        return [str(m["Channel"]) for m in left]

    def last_call(self) -> Call:
        with self.app.db.read() as s:
            return s.scalars(sa.select(Call).order_by(Call.started_at.desc())).first()

    def call_of(self, key: str) -> Call:
        with self.app.db.read() as s:
            return s.scalars(sa.select(Call).where(Call.pbx_call_id == key)).one()


def fields(m: Message) -> dict[str, str]:
    return {k: str(v) for k, v in m.items()}


def phone_of(leg: str) -> str:
    """``Local/x@ctx-0000002a;2`` → ``…;1``: the other half of a Local pair."""
    return leg[:-1] + ("1" if leg.endswith("2") else "2")


def write_prompts(prompt_dir: Path) -> None:
    for prompt_id in PROMPT_IDS:
        path = prompt_dir / "en" / f"{prompt_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tone_wav(DURATIONS[prompt_id], PROMPT_HZ, 2000))
    for name in AGENT_PROMPTS:
        hz = WHISPER_HZ if name.startswith("agent-status") else AGENT_TONE_HZ
        (prompt_dir / "en" / f"{name}.wav").write_bytes(tone_wav(0.8, hz, 3000))
    for d in (prompt_dir, prompt_dir / "en"):
        os.chmod(d, 0o755)


@contextlib.asynccontextmanager
async def real(
    lab: Lab,
    tmp: Path,
    policies: str = "",
    system: bool = False,
    capture: Transcript | None = None,
) -> AsyncIterator[Real]:
    """The daemon's Asterisk component against the lab, with an observer; ``system`` adds the
    opt-in write=system AMI user; ``capture`` records both sides (FastAGI through a tap)."""
    # everything Asterisk must reach lives beside the spool (its account's, group callconsent
    # by the spool's setgid bit), never in the test's 0700 temp dir
    spool = lab.target.spool / f"cct-{secrets.token_hex(4)}"
    scratch = Path(f"{spool}-scratch")
    prompt_dir = Path(f"{spool}-prompts")
    await asyncio.to_thread(_make_dirs, spool, scratch, prompt_dir)
    cfg_path = tmp / "callconsent.toml"
    agi_port = lab.agi_port if capture is None else free_port()  # the tap takes lab.agi_port
    taps: list[AgiTap | AmiTap] = []
    if capture is not None:
        t = lab.target
        taps = [
            AgiTap(capture, lab.agi_port, agi_port),
            AmiTap(capture, t.host, t.port, t.user, t.secret),
        ]
    system_keys = (
        f'ami_system_user = "{lab.system_user}"\nami_system_secret = "{lab.system_secret}"\n'
        if system
        else ""
    )
    cfg_path.write_text(
        f'[daemon]\ndata_dir = "{tmp / "data"}"\nnode = "pbx-test"\n'
        f'[spool]\ndir = "{spool}"\n[prompts]\ndir = "{prompt_dir}"\n'
        f"[asterisk]\nenabled = true\nagi_port = {agi_port}\n"
        f'ami_port = {lab.target.port}\nami_user = "{lab.ami_user}"\n'
        f'ami_secret = "{lab.ami_secret}"\n{system_keys}\n'
        "[policies.default]\ndigit_timeout_ms = 2000\n\n" + policies
    )
    cfg = config_mod.load(cfg_path)
    write_prompts(prompt_dir)
    sink = SinkSpy()
    app = App.open(cfg, sink=sink)
    service = AsteriskService(
        app.calls, app.spool, AsteriskOptions.from_settings(cfg.asterisk), prompt_dir
    )
    events: list[Message] = []
    observer = AmiClient(
        lab.target.host,
        lab.target.port,
        lab.target.user,
        lab.target.secret,
        on_event=events.append,
        events="on",  # the tests watch UserEvents, dialplan and bridge events too
        name="test-observer",
    )
    for tap in taps:
        await tap.start()
    await service.start()
    assert service.adapter.ami is not None and service.adapter.ami.connected, (
        "our AMI user did not log in"
    )
    if system:
        assert service.adapter.ami_system is not None, "the write=system user was refused"
    assert await observer.start()
    r = Real(lab, app, service, observer, sink, events, scratch)
    try:
        yield r
    finally:
        await r.hang_up_leftovers()
        for tap in taps:
            await tap.stop()
        await observer.stop()
        await service.stop()
        app.close()
        for made in (spool, scratch, prompt_dir):
            shutil.rmtree(made, ignore_errors=True)


def go(lab: Lab, tmp: Path, scenario: Callable[[Real], Awaitable[None]], **kw: object) -> None:
    async def main() -> None:
        async with real(lab, tmp, **kw) as r:  # type: ignore[arg-type]
            await asyncio.wait_for(scenario(r), SCENARIO_LIMIT_S)

    asyncio.run(main())


# -- audio ---------------------------------------------------------------------------------


def samples(path: str | Path) -> tuple[array.array, int]:
    """Mono 16-bit samples of a WAV (stereo is mixed down) and its rate."""
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = array.array("h", w.readframes(w.getnframes()))
    if channels == 2:
        data = array.array("h", ((data[i] + data[i + 1]) // 2 for i in range(0, len(data), 2)))
    return data, rate


def _power(block: array.array, freq: float, rate: int) -> float:
    """Goertzel: the power of ``freq`` in ``block``, normalised by the block's length."""
    k = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in block:
        s1, s2 = x + k * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - k * s1 * s2) / (len(block) ** 2)


def tone_seconds(path: str | Path, freq: float, window_s: float = 0.05) -> float:
    """Seconds of ``path`` in which ``freq`` is clearly present (tones of the test sounds at
    level 4,000 give ~4e6; silence and other tones below 1e4)."""
    data, rate = samples(path)
    n = int(rate * window_s)
    hits = sum(
        1 for i in range(0, len(data) - n + 1, n) if _power(data[i : i + n], freq, rate) > 2.5e5
    )
    return hits * window_s


def duration_s(path: str | Path) -> float:
    data, rate = samples(path)
    return len(data) / rate


def _make_dirs(*dirs: Path) -> None:
    for made in dirs:
        made.mkdir(mode=0o2770)
        os.chmod(made, 0o2770)  # the mode, whatever the umask
