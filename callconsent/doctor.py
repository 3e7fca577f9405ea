"""``callconsent doctor``: what on this host would defeat consent or break the adapters.

Each check is a function ``(config) -> list[Finding]`` in :data:`CHECKS`; other parts append
their own. The Asterisk check reads the PBX's configuration (``[asterisk] conf_dir``) for
recorders that would record without asking: ``automixmon``/``automon`` in ``[featuremap]``,
Queue ``monitor-type``/``monitor-format``, Dial/Queue options ``x``/``X``/``w``/``W``, and
``MixMonitor``/``Monitor`` outside our contexts.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from callconsent.config import Config
from recorder.finalize.spool import Spool, SpoolError


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | error
    check: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f"\n    → {self.hint}" if self.hint else ""
        return f"{self.level.upper():5} {self.check}: {self.message}{hint}"


Check = Callable[[Config], list[Finding]]
CHECKS: list[Check] = []


def run(cfg: Config) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings += check(cfg)
    return findings


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


# -- general --------------------------------------------------------------------------------


@check
def spool_and_prompts(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    try:
        Spool(cfg.spool_dir).check()
        out.append(Finding("ok", "spool", f"{cfg.spool_dir} is private to the PBX and us"))
    except SpoolError as exc:
        out.append(Finding("error", "spool", str(exc)))
    prompt_dir = cfg.prompt_dir
    if not prompt_dir.is_dir():
        return [
            *out,
            Finding(
                "warn", "prompts", f"no prompts in {prompt_dir}", "run: callconsent prompts build"
            ),
        ]
    unreadable = [
        p for p in prompt_dir.rglob("*.wav") if not stat.S_IMODE(p.stat().st_mode) & stat.S_IROTH
    ]
    if unreadable:
        out.append(
            Finding(
                "warn",
                "prompts",
                f"{len(unreadable)} prompt file(s) not readable by other accounts, e.g. "
                f"{unreadable[0]}: the PBX may not be able to play them",
                f"chmod 0644 the files and 0755 the directories under {prompt_dir}",
            )
        )
    return out


# -- Asterisk -------------------------------------------------------------------------------

_OUR_CONTEXTS = re.compile(r"^callconsent-")


# `#include extensions_callconsent.conf`, quoted ("…" or <…>) or not, bare or with a path
_OUR_INCLUDE = re.compile(
    r"""#(try)?include\s+(["<]?)(\S*/)?extensions_callconsent\.conf[">]?\s*$"""
)


def _conf_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, section, line without comment) of an Asterisk config file."""
    section = ""
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and "]" in line:
            section = line[1 : line.index("]")]
        yield number, section, line


def _app_args(line: str, app: str) -> list[str] | None:
    m = re.search(rf"\b{app}\((.*)\)", line, re.IGNORECASE)
    return m.group(1).split(",") if m else None


def _option_letters(options: str) -> str:
    return re.sub(r"\([^)]*\)", "", options)  # drop option arguments: b(...), U(...)


@check
def asterisk(cfg: Config) -> list[Finding]:
    a = cfg.asterisk
    if not a.enabled:
        return []
    conf = Path(a.conf_dir)
    if not conf.is_dir():
        return [Finding("warn", "asterisk", f"cannot read {conf}", "set [asterisk] conf_dir")]
    out: list[Finding] = []
    features = conf / "features.conf"
    if features.is_file():
        for number, section, line in _conf_lines(features):
            key, _, value = line.partition("=>") if "=>" in line else line.partition("=")
            if (
                section == "featuremap"
                and key.strip() in ("automixmon", "automon")
                and value.strip()
            ):
                out.append(
                    Finding(
                        "warn",
                        "asterisk",
                        f"{features}:{number}: {key.strip()} lets anyone in a call start a "
                        "recording that bypasses consent",
                        "remove it from [featuremap]; agents use callconsent's *41",
                    )
                )
    queues = conf / "queues.conf"
    if queues.is_file():
        for number, _, line in _conf_lines(queues):
            if line.split("=")[0].strip() in ("monitor-type", "monitor-format"):
                out.append(
                    Finding(
                        "warn",
                        "asterisk",
                        f"{queues}:{number}: Queue records calls itself ({line}), without consent",
                        "remove monitor-type/monitor-format; callconsent records the customer leg",
                    )
                )
    included = False
    for path in sorted(conf.glob("extensions*.conf")):
        for number, section, line in _conf_lines(path):
            if _OUR_INCLUDE.match(line):
                included = True
            if _OUR_CONTEXTS.match(section):
                continue
            out += _dialplan_line(path, number, line)
    if not included:
        out.append(
            Finding(
                "warn",
                "asterisk",
                f"no extensions*.conf in {conf} includes extensions_callconsent.conf",
                "see dialplan/asterisk/README.md, step 2",
            )
        )
    out += _manager_user(conf, a.ami_user or "callconsent")
    if not any(f.level != "ok" for f in out):
        out.append(Finding("ok", "asterisk", f"no recorder bypasses consent in {conf}"))
    return out


def _dialplan_line(path: Path, number: int, line: str) -> list[Finding]:
    where = f"{path}:{number}"
    for app, position, letters in (("Dial", 2, "xXwW"), ("Queue", 1, "xXwW")):
        args = _app_args(line, app)
        if args and len(args) > position and set(_option_letters(args[position])) & set(letters):
            return [
                Finding(
                    "warn",
                    "asterisk",
                    f"{where}: {app} options {args[position]!r} let a party start a recording "
                    "that bypasses consent (x/X: automixmon, w/W: automon)",
                    f"drop {letters} from the options",
                )
            ]
    if re.search(r"\b(Mix)?Monitor\(", line):
        return [
            Finding(
                "warn",
                "asterisk",
                f"{where}: the dialplan records here without asking for consent",
                "remove it; callconsent records after consent (or per policy)",
            )
        ]
    return []


def _manager_user(conf: Path, user: str) -> list[Finding]:
    out: list[Finding] = []
    for path in (conf / "manager.conf", conf / "manager_callconsent.conf"):
        if not path.is_file():
            continue
        for number, section, line in _conf_lines(path):
            key, _, value = line.partition("=")
            if section == user and key.strip() == "write":
                classes = {c.strip() for c in value.split(",")}
                if classes & {"system", "all", "command", "originate"}:
                    out.append(
                        Finding(
                            "warn",
                            "asterisk",
                            f"{path}:{number}: AMI user {user} has write={value.strip()}; "
                            "callconsent needs only write=call",
                            "set write = call (start recordings with the feature code)",
                        )
                    )
    return out
