"""``callconsent dialplan render freeswitch``: the shipped ``dialplan/freeswitch`` files with this
host's values (outbound-socket address, listen-in group, ESL password, the agents' feature
codes) filled in.

The shipped files are complete, working examples with the defaults (``127.0.0.1:8084``,
``consented``, a ``CHANGE-ME`` password, ``*41 *42 *43 *49``): an admin can copy them as they
are; rendering only swaps those tokens, so the two can never drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from callconsent.config import Config
from callconsent.privileges import readable_by

TEMPLATES = Path(__file__).resolve().parent.parent / "dialplan" / "freeswitch"
FILES = ("callconsent.xml", "callconsent-esl-user.xml", "callconsent-hardening.xml", "README.md")
DEFAULT_OUTBOUND = "127.0.0.1:8084"
DEFAULT_GROUP = "consented"
PLACEHOLDER_PASSWORD = "CHANGE-ME-callconsent-esl"  # noqa: S105 - the token we replace
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_XML_ATTR_SAFE = re.compile(r'^[^"<>&\s]{1,128}$')
#: The agents' codes in the shipped file: config key -> (default, the command it fires).
FEATURE_CODES = {
    "feature_start": ("*41", "start"),
    "feature_pause": ("*42", "mask"),
    "feature_stop": ("*43", "stop"),
    "feature_discard": ("*49", "discard"),
}


class RenderError(Exception):
    """The config holds a value the rendered files cannot carry; the message names the key."""


def render(cfg: Config, out: Path) -> list[Path]:
    fs = cfg.freeswitch
    if not _GROUP.match(fs.eavesdrop_group):
        raise RenderError(f"freeswitch.eavesdrop_group: {fs.eavesdrop_group!r} is not a plain name")
    if fs.esl_password and not _XML_ATTR_SAFE.match(fs.esl_password):
        raise RenderError("freeswitch.esl_password: cannot hold quotes, <, >, & or spaces here")
    replacements = {
        f"{DEFAULT_OUTBOUND}/": f"{fs.outbound_host}:{fs.outbound_port}/",
        f"eavesdrop_require_group={DEFAULT_GROUP}": f"eavesdrop_require_group={fs.eavesdrop_group}",
        f'value="{PLACEHOLDER_PASSWORD}"': f'value="{fs.esl_password or PLACEHOLDER_PASSWORD}"',
    }
    user = fs.esl_user.split("@", 1)[0] if fs.esl_user else "callconsent"
    if not _GROUP.match(user):
        raise RenderError(f"freeswitch.esl_user: {fs.esl_user!r} is not user@domain")
    replacements['<user id="callconsent">'] = f'<user id="{user}">'
    replacements |= _feature_codes(fs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        text = (TEMPLATES / name).read_text()
        if name.endswith(".xml"):
            for old, new in replacements.items():
                text = text.replace(old, new)
        if name.endswith(".xml"):
            text = text.replace("<!--\n", f"<!--\n{_rendered_from(cfg)}", 1)
        target = out / name
        target.write_text(text)
        # FreeSWITCH (its own account) reads them all; the ESL user's password only its group
        secret = name == "callconsent-esl-user.xml" and fs.esl_password
        note = readable_by(target, fs.os_user, 0o640 if secret else 0o644)
        if note:
            print(f"note: {note}", file=sys.stderr)
        written.append(target)
    return written


def _rendered_from(cfg: Config) -> str:
    return f"  Rendered by `callconsent dialplan render freeswitch` from {cfg.source}.\n"


def _feature_codes(fs: object) -> dict[str, str]:
    """``bind_digit_action callconsent_agent,<code>,…`` for each configured code. Codes are
    DTMF keys only (checked when the config loads); two commands on one code would leave one
    unreachable, so that is refused."""
    codes = {key: getattr(fs, key, default) for key, (default, _) in FEATURE_CODES.items()}
    if len(set(codes.values())) != len(codes):
        raise RenderError(f"freeswitch.feature_*: two commands share one code: {codes}")
    return {
        f"callconsent_agent,{default},exec[H]:execute_extension,callconsent_cmd_{verb} ": (
            f"callconsent_agent,{codes[key]},exec[H]:execute_extension,callconsent_cmd_{verb} "
        )
        for key, (default, verb) in FEATURE_CODES.items()
    }
