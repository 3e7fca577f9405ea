"""Configuration: one TOML file, validated once at start-up.

Where it comes from: ``--config PATH``, else ``$CALLCONSENT_CONFIG``, else
``/etc/callconsent/callconsent.toml`` if it exists, else the embedded defaults (SQLite and data
under ``./var/``). Every error names the file and the key (``callconsent.toml: asterisk.agi_port:
expected an integer 1..65535; got 'x'``). Relative paths are relative to the config file's
directory (for the embedded defaults: to the current directory).

Each ``[section]`` is a dataclass below; a field's type and ``check`` metadata are its schema.
Documented in ``docs/configuration.md`` and ``deploy/callconsent.toml.example``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from consent_ivr import PolicyBook, PolicyError

SYSTEM_CONFIG = Path("/etc/callconsent/callconsent.toml")
EMBEDDED = "<embedded defaults>"


class ConfigError(Exception):
    """The configuration is invalid; ``source`` is the file, ``key`` the dotted key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else f"expected a port 1..65535; got {v}"


def _ip(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"expected an IP address such as 127.0.0.1; got {v!r}"
    return None


def _choice(*allowed: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in allowed else f"expected one of {', '.join(allowed)}; got {v!r}"

    return check


def _positive(v: float) -> str | None:
    return None if v > 0 else f"expected a positive number; got {v}"


def _check(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


@dataclass(frozen=True)
class DaemonSection:
    data_dir: Path = Path("var")
    node: str = field(default_factory=socket.gethostname)  # this PBX host's name in the store
    user: str = "callconsent"  # the account `serve` switches to when started as root
    log_level: str = field(
        default="info", metadata=_check(_choice("debug", "info", "warning", "error"))
    )
    log_format: str = field(default="kv", metadata=_check(_choice("kv", "json")))
    shutdown_grace_s: float = field(default=10.0, metadata=_check(_positive))


@dataclass(frozen=True)
class DatabaseSection:
    url: str = ""  # empty: SQLite at <data_dir>/callconsent.db


@dataclass(frozen=True)
class KeysSection:
    dir: Path | None = None  # empty: <data_dir>/keys


@dataclass(frozen=True)
class SpoolSection:
    dir: Path | None = None  # empty: see Config.spool_dir (the Debian layout, else <data_dir>)


@dataclass(frozen=True)
class NumbersSection:
    default_region: str = "DE"  # how numbers without a country code are read (ISO 3166)


@dataclass(frozen=True)
class PromptsSection:
    dir: Path | None = None  # empty: see Config.prompt_dir (the Debian layout, else <data_dir>)


def _feature_code(v: str) -> str | None:
    ok = 1 <= len(v) <= 8 and all(ch in "0123456789*#" for ch in v)
    return None if ok else f"expected 1 to 8 DTMF keys (0-9, *, #) such as *41; got {v!r}"


def _word(v: str) -> str | None:
    ok = 0 < len(v) <= 32 and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in v)
    return None if ok else f"expected letters, digits, '_' or '-'; got {v!r}"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else f"expected 1 or more; got {v}"


@dataclass(frozen=True)
class AsteriskSection:
    enabled: bool = False
    agi_host: str = field(default="127.0.0.1", metadata=_check(_ip))
    agi_port: int = field(default=4573, metadata=_check(_port))
    ami_host: str = field(default="127.0.0.1", metadata=_check(_ip))
    ami_port: int = field(default=5038, metadata=_check(_port))
    ami_user: str = ""  # empty: no AMI client
    ami_secret: str = ""
    ami_system_user: str = ""  # opt-in write=system user: starting recordings from the CLI
    ami_system_secret: str = ""
    max_sessions: int = field(default=5000, metadata=_check(_at_least_one))
    env_timeout_s: float = field(default=5.0, metadata=_check(_positive))
    command_timeout_s: float = field(default=10.0, metadata=_check(_positive))
    header_wait_s: float = field(default=2.0, metadata=_check(_positive))
    spy_group: str = field(default="consented", metadata=_check(_word))
    feature_start: str = field(default="*41", metadata=_check(_feature_code))
    feature_pause: str = field(default="*42", metadata=_check(_feature_code))
    feature_stop: str = field(default="*43", metadata=_check(_feature_code))
    feature_discard: str = field(default="*49", metadata=_check(_feature_code))
    conf_dir: Path = Path("/etc/asterisk")  # read by `callconsent doctor`
    os_user: str = "asterisk"  # the account Asterisk runs as (doctor, dialplan render)


@dataclass(frozen=True)
class FreeswitchSection:
    enabled: bool = False
    outbound_host: str = field(default="127.0.0.1", metadata=_check(_ip))
    outbound_port: int = field(default=8084, metadata=_check(_port))
    esl_host: str = field(default="127.0.0.1", metadata=_check(_ip))
    esl_port: int = field(default=8021, metadata=_check(_port))
    esl_user: str = ""  # userauth user@domain; empty with a password: plain `auth`
    esl_password: str = ""  # required when enabled: RECORD_STOP arrives only on inbound ESL
    eavesdrop_group: str = "consented"  # set on consenting customer legs (listen-in)
    # the agents' codes, written into callconsent.xml by `callconsent dialplan render freeswitch`
    feature_start: str = field(default="*41", metadata=_check(_feature_code))
    feature_pause: str = field(default="*42", metadata=_check(_feature_code))
    feature_stop: str = field(default="*43", metadata=_check(_feature_code))
    feature_discard: str = field(default="*49", metadata=_check(_feature_code))
    conf_dir: Path = Path("/etc/freeswitch")  # `callconsent doctor` reads dialplan/ in it
    os_user: str = "freeswitch"  # the account FreeSWITCH runs as (doctor, dialplan render)


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = True
    host: str = field(default="127.0.0.1", metadata=_check(_ip))
    port: int = field(default=9470, metadata=_check(_port))


@dataclass(frozen=True)
class RecorderSection:
    vault_dir: Path | None = None  # empty: <data_dir>/recordings (the encrypted files)
    workers: int = field(default=4, metadata=_check(_positive))  # encryption threads
    reconcile_interval_s: float = field(default=60.0, metadata=_check(_positive))
    settle_s: float = field(default=30.0, metadata=_check(_positive))  # unchanged before repair
    overdue_after_s: float = field(default=600.0, metadata=_check(_positive))  # plaintext alarm
    spool_full_bytes: int = field(default=1 << 20, metadata=_check(_positive))  # free under: full
    epochs_ahead_weeks: int = field(default=26, metadata=_check(_positive))
    runway_warning_weeks: int = field(default=8, metadata=_check(_positive))


@dataclass(frozen=True)
class RetentionSection:
    default_days: int = field(default=30, metadata=_check(_positive))
    max_days: int = field(default=365, metadata=_check(_positive))  # no category may exceed it
    categories: dict[str, int] = field(default_factory=dict)  # retention category -> days
    interval_s: float = field(default=3600.0, metadata=_check(_positive))  # purge pass in serve
    batch: int = field(default=10000, metadata=_check(_positive))  # recordings per transaction
    shared_storage: bool = False  # every host sees every host's files: purge them all

    def problems(self) -> list[tuple[str, str]]:
        """Checks across keys: (key, message) for each value above the maximum."""
        found = [
            (f"categories.{name}", f"expected 1..max_days ({self.max_days}); got {days}")
            for name, days in self.categories.items()
            if not 1 <= days <= self.max_days
        ]
        if self.default_days > self.max_days:
            found.append(("default_days", f"exceeds max_days ({self.max_days})"))
        return found


def _cidr(v: str) -> str | None:
    if not v:
        return None
    try:
        ipaddress.ip_network(v)
    except ValueError:
        return f"expected an address or network such as 127.0.0.1 or 10.0.0.0/24; got {v!r}"
    return None


@dataclass(frozen=True)
class WebSection:
    """``callconsent web``: the console and API (docs/web.md)."""

    host: str = field(default="127.0.0.1", metadata=_check(_ip))
    port: int = field(default=8470, metadata=_check(_port))
    # how the private keys are unlocked at start (else: no audio, and the pages say why)
    key_file: Path | None = None
    passphrase_file: Path | None = None
    credential: str = "callconsent-keys"  # systemd LoadCredential= name ($CREDENTIALS_DIRECTORY)
    credential_is_key_file: bool = False  # the credential holds key-file bytes, not a passphrase
    session_idle_minutes: int = field(default=30, metadata=_check(_at_least_one))
    session_absolute_hours: int = field(default=12, metadata=_check(_at_least_one))
    share_link_max_hours: int = field(default=168, metadata=_check(_at_least_one))
    login_max_failures: int = field(default=5, metadata=_check(_at_least_one))
    lockout_minutes: int = field(default=15, metadata=_check(_at_least_one))
    address_max_failures: int = field(default=20, metadata=_check(_at_least_one))
    trusted_proxy: str = field(default="", metadata=_check(_cidr))  # empty: no proxy trusted
    proxy_auth_header: str = ""  # e.g. "Remote-User": SSO, believed from trusted_proxy only
    secure_cookies: str = field(default="auto", metadata=_check(_choice("auto", "always", "never")))


SECTIONS: dict[str, type] = {
    "daemon": DaemonSection,
    "database": DatabaseSection,
    "keys": KeysSection,
    "spool": SpoolSection,
    "numbers": NumbersSection,
    "prompts": PromptsSection,
    "asterisk": AsteriskSection,
    "freeswitch": FreeswitchSection,
    "metrics": MetricsSection,
    "recorder": RecorderSection,
    "retention": RetentionSection,
    "web": WebSection,
}


ROLES = ("agent", "supervisor", "dpo", "admin")


@dataclass(frozen=True)
class Actor:
    """A named person who may act through the CLI. ``os_users``, when given, are the OS
    accounts allowed to act under this name (checked against the invoking or sudo user)."""

    name: str
    role: str
    os_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    source: str
    base_dir: Path
    daemon: DaemonSection
    database: DatabaseSection
    keys: KeysSection
    spool: SpoolSection
    numbers: NumbersSection
    prompts: PromptsSection
    asterisk: AsteriskSection
    freeswitch: FreeswitchSection
    metrics: MetricsSection
    recorder: RecorderSection
    retention: RetentionSection
    web: WebSection
    policies: PolicyBook
    actors: Mapping[str, Actor] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # -- derived paths (absolute) ------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._abs(self.daemon.data_dir)

    @property
    def key_dir(self) -> Path:
        return self._abs(self.keys.dir) if self.keys.dir else self.data_dir / "keys"

    @property
    def spool_dir(self) -> Path:
        """Empty ``[spool] dir``: ``/var/spool/<name>`` for a data dir ``/var/lib/<name>`` (the
        Debian layout, deploy/README.md: the PBX's account cannot enter the 0750 data dir),
        else ``<data_dir>/spool`` (a development run's ``./var/spool``)."""
        if self.spool.dir:
            return self._abs(self.spool.dir)
        system = self._debian_name()
        return Path("/var/spool") / system if system else self.data_dir / "spool"

    @property
    def prompt_dir(self) -> Path:
        """Empty ``[prompts] dir``: ``/var/lib/<name>-prompts`` beside a data dir
        ``/var/lib/<name>`` (readable by the PBX's account), else ``<data_dir>/prompts``."""
        if self.prompts.dir:
            return self._abs(self.prompts.dir)
        system = self._debian_name()
        return Path("/var/lib") / f"{system}-prompts" if system else self.data_dir / "prompts"

    def _debian_name(self) -> str | None:
        """``callconsent`` when the data dir is ``/var/lib/callconsent`` (any name), else None."""
        data = self.data_dir
        return data.name if data.parent == Path("/var/lib") else None

    @property
    def vault_dir(self) -> Path:
        d = self.recorder.vault_dir
        return self._abs(d) if d else self.data_dir / "recordings"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'callconsent.db'}"

    def _abs(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base_dir / p).absolute()


def state_paths(cfg: Config) -> list[Path]:
    """What the daemon's account must reach: its config file and its state."""
    source = [Path(cfg.source)] if cfg.source != EMBEDDED else []
    return [*source, cfg.data_dir, cfg.key_dir, cfg.spool_dir, cfg.prompt_dir, cfg.vault_dir]


def locate(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The config file to use, or None for the embedded defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("CALLCONSENT_CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration (see the module docstring for where from)."""
    file = locate(path)
    if file is None:
        return parse({}, EMBEDDED, Path.cwd())
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(file), "", "no such file") from None
    except PermissionError:
        raise ConfigError(str(file), "", f"cannot read it: {_why_unreadable(file)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), "", f"not valid TOML: {exc}") from None
    return parse(data, str(file), file.absolute().parent)


def _why_unreadable(file: Path) -> str:
    """The directory on the way that blocks us, else the file's own mode."""
    for parent in reversed(file.absolute().parents):
        if not os.access(parent, os.X_OK):
            return f"the directory {parent} cannot be entered ({_mode(parent)})"
    return f"permission denied ({_mode(file)})"


def _mode(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        return exc.strerror or str(exc)
    return f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}"


def parse(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    known = {*SECTIONS, "policies", "actors"}
    for key in data:
        if key not in known:
            raise ConfigError(source, key, f"unknown section; known: {', '.join(sorted(known))}")
    sections = {
        name: _section(cls, data.get(name, {}), name, source) for name, cls in SECTIONS.items()
    }
    policies_data = data.get("policies", {})
    if not isinstance(policies_data, Mapping):
        raise ConfigError(source, "policies", "expected a table of policies")
    try:
        policies = PolicyBook.from_mapping(policies_data)
    except PolicyError as exc:
        raise ConfigError(source, exc.key, exc.message) from None
    actors = _actors(data.get("actors", {}), source)
    return Config(
        source=source,
        base_dir=base_dir,
        policies=policies,
        actors=actors,
        raw=dict(data),
        **sections,
    )


def _actors(data: Any, source: str) -> dict[str, Actor]:
    """``[actors]``: ``alice = "dpo"``, or ``[actors.alice] role = "dpo", os_users = ["alice"]``."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "actors", "expected a table of actor = role")
    actors: dict[str, Actor] = {}
    for name, value in data.items():
        key = f"actors.{name}"
        table = {"role": value} if isinstance(value, str) else value
        if not isinstance(table, Mapping):
            raise ConfigError(source, key, "expected a role string or a table with role, os_users")
        unknown = set(table) - {"role", "os_users"}
        if unknown:
            raise ConfigError(
                source, f"{key}.{sorted(unknown)[0]}", "unknown key; known: os_users, role"
            )
        role = table.get("role")
        if role not in ROLES:
            raise ConfigError(
                source,
                f"{key}.role" if not isinstance(value, str) else key,
                f"expected one of {', '.join(ROLES)}; got {role!r}",
            )
        os_users = _coerce(list[str], table.get("os_users", []), source, f"{key}.os_users")
        actors[name] = Actor(name, role, tuple(os_users))
    return actors


def _section(cls: type, data: Any, name: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(source, name, "expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                source, f"{name}.{key}", f"unknown key; known: {', '.join(sorted(names))}"
            )
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key = f"{name}.{f.name}"
        value = _coerce(hints[f.name], data[f.name], source, key)
        check = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(source, key, problem)
        values[f.name] = value
    section = cls(**values)
    for key, problem in getattr(section, "problems", list)():
        raise ConfigError(source, f"{name}.{key}", problem)
    return section


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
        if value in ("", None):
            return None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string; got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            what = "a path" + (" or an empty string" if optional else "")
            raise ConfigError(source, key, f"expected {what}; got {value!r}")
        return Path(value)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list; got {value!r}")
        return [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, f"expected a table; got {value!r}")
        return {str(k): _coerce(item, v, source, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"config schema uses an unsupported type {hint!r} for {key}")
