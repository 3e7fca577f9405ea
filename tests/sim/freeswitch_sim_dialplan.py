"""The shipped ``callconsent.xml`` as the simulated FreeSWITCH runs it, and the key bindings of
``bind_digit_action`` on each leg.

Built from the real FreeSWITCH 1.10.12 (capture ``bridge/s7_bind_digit_action``, made with
``tests/fs_capture_codes.py``) and its source (``mod_dptools.c`` ``bind_to_session`` /
``digit_action_callback``, ``switch_ivr_async.c`` ``switch_ivr_dmachine_*``):

* a binding belongs to one leg and one realm; binding in a realm makes it the leg's current
  realm, and only the current realm's bindings match;
* keys a leg's phone sends are matched digit by digit: a sequence that is a binding and the
  prefix of no longer one fires at once; one that can no longer match is let through (the
  capture shows it as ``DTMF`` events on that leg, and the other party hears it); what is left
  when the phone stops is decided at the digit timeout;
* ``exec[H]:execute_extension,<ext> XML <context>`` runs that extension on the leg: the capture
  shows ``CHANNEL_EXECUTE execute_extension``, then per action ``CHANNEL_EXECUTE``, (for
  ``event``) the ``CUSTOM`` event, ``CHANNEL_EXECUTE_COMPLETE``, then the extension's
  ``CHANNEL_EXECUTE_COMPLETE``; a matched key makes no ``DTMF`` event;
* ``bind_digit_action`` splits its argument on commas (at most 6 fields), ``event`` its own on
  commas into ``name=value`` headers; ``$1`` is the extension's first regex group and
  ``${var}`` the leg's variable (empty when unset).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parents[2] / "dialplan" / "freeswitch" / "callconsent.xml"
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


@dataclass
class Binding:
    action: str  # e.g. exec[H]:execute_extension
    value: str  # its argument


@dataclass
class Keys:
    """One leg's digit machine: realms of bindings, the current realm, what the far end heard."""

    realms: dict[str, dict[str, Binding]] = field(default_factory=dict)
    realm: str | None = None
    passed: str = ""  # keys let through to the other party

    @property
    def bindings(self) -> dict[str, Binding]:
        return self.realms.get(self.realm or "", {})


@dataclass
class Extension:
    name: str
    conditions: list[tuple[str, re.Pattern[str]]]
    actions: list[tuple[str, str]]


class Dialplan:
    """The contexts of one dialplan file, and the applications the shipped one needs."""

    def __init__(
        self, emit: Callable[..., None], text: str | None = None, *, path: Path = SHIPPED
    ) -> None:
        self.emit = emit  # FakeFreeSwitch.emit(name, leg, **headers)
        self.db: dict[tuple[str, str], str] = {}  # mod_db's db_data: (realm, key) -> data
        root = ET.fromstring(text if text is not None else path.read_text())
        self.contexts: dict[str, list[Extension]] = {}
        for ctx in root.iter("context"):
            exts = self.contexts.setdefault(ctx.get("name", ""), [])
            for ext in ctx.iter("extension"):
                conds, actions = [], []
                for cond in ext.iter("condition"):
                    conds.append((cond.get("field", ""), re.compile(cond.get("expression", ""))))
                    actions += [(a.get("application", ""), a.get("data", "")) for a in cond]
                exts.append(Extension(ext.get("name", ""), conds, actions))

    def hunt(self, context: str, destination: str) -> tuple[Extension, tuple[str, ...]]:
        """The first extension whose ``destination_number`` condition matches (the shipped file's
        other conditions test variables at run time; they are not needed here)."""
        for ext in self.contexts[context]:
            for fld, regex in ext.conditions:
                if fld == "destination_number" and (m := regex.search(destination)):
                    return ext, m.groups()
        raise LookupError(f"no extension for {destination!r} in context {context!r}")

    # -- applications ----------------------------------------------------------------------

    def run(self, leg: Any, app: str, data: str) -> None:
        """One application on ``leg``, with the events the real one sends."""
        info = {"Application": app, "Application-Data": data}
        self.emit("CHANNEL_EXECUTE", leg, **info)
        if app == "execute_extension":
            destination, _, context = data.partition(" XML ")
            ext, groups = self.hunt(context.strip(), destination.strip())
            for sub_app, sub_data in ext.actions:
                self.run(leg, sub_app, self.expand(leg, sub_data, groups))
        elif app == "bind_digit_action":
            self.bind(leg, data)
        elif app == "event":
            headers = dict(part.split("=", 1) for part in data.split(",") if "=" in part)
            name = headers.pop("Event-Name", "CUSTOM")
            if leg.peer is not None:
                headers |= {
                    "Other-Leg-Unique-ID": leg.peer.uuid,
                    "Other-Leg-Channel-Name": leg.peer.name,
                }
            self.emit(name, leg, **headers)
        elif app in ("set", "export"):
            name, _, value = data.partition("=")
            leg.variables[name] = value
            if app == "export":
                leg.exports.add(name)
        elif app == "unset":
            leg.variables.pop(data, None)
        elif app == "db":  # mod_db: insert/<realm>/<key>/<data> or delete/<realm>/<key>
            verb, realm, key, *value = data.split("/", 3)
            if verb == "insert":
                self.db[(realm, key)] = value[0]
            elif verb == "delete":
                self.db.pop((realm, key), None)
        else:
            raise NotImplementedError(f"the simulator does not run {app!r} from the dialplan")
        self.emit("CHANNEL_EXECUTE_COMPLETE", leg, **info, **{"Application-Response": "_none_"})

    def db_api(self, args: str) -> str:
        """``api db …`` as mod_db answers it: select prints the data or nothing."""
        verb, _, rest = args.partition("/")
        realm, _, key = rest.partition("/")
        if verb == "select":
            return self.db.get((realm, key), "")
        if verb == "delete":
            self.db.pop((realm, key), None)
            return "+OK"
        if verb == "list":  # the keys of a realm, joined by ","; an empty realm prints nothing
            return ",".join(k for r, k in self.db if r == realm)
        return "-USAGE: [insert|delete]/<realm>/<key>/<val>"

    @staticmethod
    def expand(leg: Any, data: str, groups: tuple[str, ...]) -> str:
        for i, group in enumerate(groups, 1):
            data = data.replace(f"${i}", group or "")
        return _VAR.sub(lambda m: leg.variables.get(m[1], ""), data)

    def enter(self, leg: Any, context: str, destination: str) -> None:
        """What an entry extension does on ``leg`` before its ``socket`` action (variables for
        the bridge, the agent's codes on an outbound agent leg)."""
        ext, groups = self.hunt(context, destination)
        for app, data in ext.actions:
            if app == "socket":
                return
            self.run(leg, app, self.expand(leg, data, groups))

    @staticmethod
    def bind(leg: Any, data: str) -> None:
        fields = data.split(",", 5)
        realm, digits, action = fields[0], fields[1], fields[2]
        value = fields[3] if len(fields) > 3 else ""
        if digits[0] in "~=":
            raise NotImplementedError("regex and first-match bindings are not simulated")
        leg.keys.realms.setdefault(realm, {})[digits] = Binding(action, value)
        leg.keys.realm = realm

    # -- keys ------------------------------------------------------------------------------

    def press(self, leg: Any, digits: str) -> None:
        """The phone on ``leg`` sends ``digits`` (RFC 2833 / INFO: processed by the leg's
        bindings), then nothing until the digit timeout."""
        pending = ""
        for digit in digits:
            pending += digit
            bindings = leg.keys.bindings
            longer = any(b != pending and b.startswith(pending) for b in bindings)
            if pending in bindings and not longer:
                self._fire(leg, bindings[pending])
                pending = ""
            elif not longer:
                self._let_through(leg, pending)
                pending = ""
        if pending in leg.keys.bindings:
            self._fire(leg, leg.keys.bindings[pending])
        elif pending:
            self._let_through(leg, pending)

    def _fire(self, leg: Any, binding: Binding) -> None:
        kind, _, app = binding.action.partition(":")
        if not re.fullmatch(r"exec(\[[A-Za-z]*\])?", kind):
            raise NotImplementedError(f"binding action {binding.action!r} is not simulated")
        self.run(leg, app, binding.value)

    def _let_through(self, leg: Any, digits: str) -> None:
        for digit in digits:
            self.emit("DTMF", leg, DTMF_Digit=digit, DTMF_Duration="2000", DTMF_Source="APP")
        if leg.peer is not None:
            leg.peer.keys.passed += digits
