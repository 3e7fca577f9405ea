"""A small interpreter for the dialplan we ship (``dialplan/asterisk/extensions_callconsent.conf``)
and a reader for our ``[applicationmap]`` include, so the simulator runs *our files*, not a
Python copy of them. It knows what those files use: ``Set`` (also of ``FILE()``), ``ExecIf``,
``GotoIf``, ``AGI``, ``Return``, ``StopMixMonitor``, ``ChanSpy``, ``NoOp``; ``${VAR}``,
``${FUNC(args)}`` and ``$[a = b]`` / ``!=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asterisk_sim import SimChannel


def _match(text: str, start: int, opening: str, closing: str) -> int:
    """Index of the bracket closing the one opened at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening}{closing} in {text!r}")


def substitute(chan: SimChannel, text: str) -> str:
    """Asterisk's substitution, inside out: ``${…}`` and ``$[…]``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("${", i):
            end = _match(text, i + 1, "{", "}")
            out.append(_expand(chan, substitute(chan, text[i + 2 : end])))
            i = end + 1
        elif text.startswith("$[", i):
            end = _match(text, i + 1, "[", "]")
            out.append(_expression(substitute(chan, text[i + 2 : end])))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(chan: SimChannel, inner: str) -> str:
    m = re.match(r"^([A-Z_0-9]+)\((.*)\)$", inner, re.S)
    if m:
        return chan.function(m.group(1), m.group(2))
    return chan.get_var(inner) or ""


def _expression(expr: str) -> str:
    for op in ("!=", "="):
        left, sep, right = expr.partition(f" {op} ")
        if sep:
            equal = left.strip().strip('"') == right.strip().strip('"')
            return "1" if equal == (op == "=") else "0"
    return expr.strip()


@dataclass(frozen=True)
class Step:
    label: str
    app: str
    args: str


class Dialplan:
    def __init__(self, contexts: dict[str, list[Step]]) -> None:
        self.contexts = contexts

    @classmethod
    def parse(cls, text: str) -> Dialplan:
        contexts: dict[str, list[Step]] = {}
        current: list[Step] | None = None
        for raw in text.splitlines():
            line = raw.split(";", 1)[0].strip()  # our lines hold no ';' but in comments
            if not line:
                continue
            if line.startswith("["):
                current = contexts.setdefault(line.strip("[]"), [])
                continue
            m = re.match(r"^(exten\s*=>\s*s,1|same\s*=>\s*n(?:\((\w+)\))?),(\w+)\((.*)\)$", line)
            assert m is not None and current is not None, raw
            current.append(Step(m.group(2) or "", m.group(3), m.group(4)))
        return cls(contexts)

    async def gosub(self, chan: SimChannel, context: str, args: tuple[str, ...] = ()) -> str:
        """``Gosub(context,s,1(args))``: returns GOSUB_RETVAL."""
        saved = {f"ARG{i}": chan.vars.get(f"ARG{i}") for i in range(1, 6)}
        for i, value in enumerate(args, 1):
            chan.vars[f"ARG{i}"] = value
        try:
            steps = self.contexts[context]
            pc = 0
            while pc < len(steps) and chan.alive:
                step = steps[pc]
                pc += 1
                data = step.args
                if step.app == "Return":
                    retval = chan.evaluate(data)
                    chan.vars["GOSUB_RETVAL"] = retval
                    return retval
                if step.app == "GotoIf":
                    cond, _, label = chan.evaluate(data).partition("?")
                    if cond.strip() not in ("", "0"):
                        pc = next(i for i, s in enumerate(steps) if s.label == label.split(":")[0])
                    continue
                if step.app == "ExecIf":
                    cond, _, app_call = data.partition("?")
                    if chan.evaluate(cond).strip() in ("", "0"):
                        continue
                    m = re.match(r"^(\w+)\((.*)\)$", app_call)
                    assert m is not None, data
                    await self.run_app(chan, m.group(1), m.group(2))
                    continue
                await self.run_app(chan, step.app, data)
            return ""
        finally:
            for name, value in saved.items():
                if value is None:
                    chan.vars.pop(name, None)
                else:
                    chan.vars[name] = value

    async def run_app(self, chan: SimChannel, app: str, data: str) -> None:
        value = chan.evaluate(data)
        if app == "Set":
            name, _, val = value.partition("=")
            m = re.match(r"^FILE\(([^,)]+)\)$", name)
            if m:  # func_env.c: fopen(path, "w"), write, close; a failure is only logged
                try:
                    Path(m.group(1)).write_text(val)  # noqa: ASYNC240 - a tiny local write
                except OSError as exc:
                    chan.events.append(("file_write_failed", m.group(1), str(exc)))
            else:
                chan.set_var(name, val)
        elif app == "AGI":
            url, *args = value.split(",")
            chan.set_var("AGISTATUS", await chan.sim.run_agi(chan, url, tuple(args)))
        elif app == "StopMixMonitor":  # the ID given, else every MixMonitor of the channel
            chan.stop_mixmonitor(value or None)
        elif app == "ChanSpy":
            target, _, options = value.partition(",")
            await chan.sim.chanspy(chan, target, options)
        elif app != "NoOp":
            raise AssertionError(f"the simulator does not know {app}()")


@dataclass(frozen=True)
class Feature:
    name: str
    code: str
    activation: str  # self | peer
    app: str  # AGI | Gosub
    data: str  # AGI: the URL; Gosub: context,s,1(args)


def parse_applicationmap(text: str) -> dict[str, Feature]:
    """``name => code,self|peer,AGI(url)`` or ``…,Gosub(context,s,1(args))`` lines, by code."""
    features: dict[str, Feature] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        m = re.match(r"^(\w+)\s*=>\s*([0-9*#]+),(self|peer),(AGI|Gosub)\((.*)\)$", line)
        assert m is not None, raw
        features[m.group(2)] = Feature(*m.group(1, 2, 3, 4, 5))
    return features
