"""The Asterisk files an admin loads, rendered from the templates in ``agi/templates/``.

``dialplan/asterisk/*.conf`` in the repository are these templates rendered with the default
settings (a test keeps them in step); ``callconsent dialplan render asterisk --out DIR`` fills
in this host's settings. Placeholders are ``@NAME@`` so Asterisk's own ``${…}`` stays as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

FILES = ("extensions_callconsent.conf", "features_callconsent.conf", "manager_callconsent.conf")
AGENT_FEATURES = "ccstart#ccpause#ccstop#ccdiscard"
SECRET_PLACEHOLDER = "CHANGE-ME"  # noqa: S105 - what an admin must replace


class RenderError(ValueError):
    """A setting cannot be written into an Asterisk file safely."""


@dataclass(frozen=True)
class DialplanSettings:
    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    spool: str = "/var/spool/callconsent"
    config: str = "/etc/callconsent/callconsent.toml"  # the file these were rendered from
    ami_user: str = "callconsent"
    ami_secret: str = SECRET_PLACEHOLDER
    ami_system_user: str = "callconsent-system"
    spy_group: str = "consented"
    feature_start: str = "*41"
    feature_pause: str = "*42"
    feature_stop: str = "*43"
    feature_discard: str = "*49"

    def placeholders(self) -> dict[str, str]:
        host = f"[{self.agi_host}]" if ":" in self.agi_host else self.agi_host
        values = {
            "AGI_URL": f"agi://{host}:{self.agi_port}",
            "SPOOL": self.spool,
            "CONFIG": self.config,
            "AMI_USER": self.ami_user,
            "AMI_SECRET": self.ami_secret or SECRET_PLACEHOLDER,
            "AMI_SYSTEM_USER": self.ami_system_user,
            "SPY_GROUP": self.spy_group,
            "AGENT_FEATURES": AGENT_FEATURES,
            "FEATURE_START": self.feature_start,
            "FEATURE_PAUSE": self.feature_pause,
            "FEATURE_STOP": self.feature_stop,
            "FEATURE_DISCARD": self.feature_discard,
        }
        for name, value in values.items():
            # one line of an Asterisk config: no line breaks, no comment char, no brackets
            if re.search(r"[\r\n;\[\]]", value.replace(host, "")) or not value:
                raise RenderError(f"{name.lower()} cannot go into an Asterisk file: {value!r}")
        if not re.fullmatch(r"/[A-Za-z0-9._/+-]*", self.spool):
            # it goes into FILE(...) and MixMonitor's arguments: no ',', '(', ')', '$', spaces
            raise RenderError(f"spool must be an absolute path of plain characters: {self.spool!r}")
        codes = [self.feature_start, self.feature_pause, self.feature_stop, self.feature_discard]
        if len(set(codes)) != len(codes):
            raise RenderError(f"the agent feature codes must differ: {codes}")
        return values


def template(name: str) -> str:
    return resources.files("agi").joinpath("templates", name).read_text(encoding="utf-8")


def render(settings: DialplanSettings) -> dict[str, str]:
    """File name → content, every placeholder filled in."""
    values = settings.placeholders()
    out: dict[str, str] = {}
    for name in FILES:
        text = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], template(name))
        out[name] = text
    return out
