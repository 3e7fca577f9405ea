"""Every FreeSWITCH command and application argument we send, built in one place from our own
values only: UUIDs, spool paths named by our recording ids, prompt paths from our catalog,
policy digits. Caller data (numbers, names, anything from a channel variable a caller or trunk
can set) never reaches these strings.

Why so strict: FreeSWITCH expands ``${...}`` in application arguments (``${system(...)}`` runs a
shell command unless ``api-expansion`` is off), splits ``uuid_record`` and
``play_and_get_digits`` arguments on spaces, and ends a command at a newline. So every value is
checked against a narrow pattern here and refused (:class:`UnsafeValue`) otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

from esl_listener.protocol import UnsafeCommand

_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")  # FreeSWITCH UUIDs, origination_uuid too
_PATH = re.compile(r"^/[A-Za-z0-9/_.+-]{1,1023}$")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_VAR_VALUE = re.compile(r"^[A-Za-z0-9_.:@+-]{0,128}$")
_DIGITS = re.compile(r"^[0-9*#A-D]{1,16}$")

#: The digit variable play_and_get_digits fills (``variable_callconsent_digit`` on completion).
DIGIT_VAR = "callconsent_digit"
#: What the consent question accepts as one key; ``#`` ends input (counts as no answer), and the
#: consent machine decides which keys are valid, so an invalid key reaches it as evidence.
ANY_KEY = "^[0-9*A-D]$"
RECORD_ACTIONS = ("start", "stop", "mask", "unmask")
#: The caller's withdraw key: its ``bind_digit_action`` realm, and the shipped dialplan's
#: extension it runs (which fires ``CUSTOM consent::withdraw`` on the customer's leg).
WITHDRAW_REALM = "callconsent_withdraw"
WITHDRAW_TARGET = "callconsent_withdraw XML callconsent"
_KEY = re.compile(r"^[0-9*#A-D]$")
#: The neutral variable names of the consent machine, as FreeSWITCH channel variables.
CHANNEL_VARIABLES = {
    "CONSENT_STATUS": "consent_status",
    "CONSENT_ID": "consent_id",
    "CONSENT_RECORDING_ID": "consent_recording_id",
}


class UnsafeValue(UnsafeCommand):
    """A value that could change the meaning of a FreeSWITCH command; refused."""


def uuid(value: str) -> str:
    if not _UUID.match(value):
        raise UnsafeValue(f"not a channel UUID: {value[:70]!r}")
    return value


def path(value: str | Path) -> str:
    text = str(value)
    if not _PATH.match(text) or "/../" in text or text.endswith("/.."):
        raise UnsafeValue(f"path has characters FreeSWITCH arguments cannot carry: {text[:80]!r}")
    return text


def variable(name: str, value: str) -> str:
    """``name=value`` for ``set``/``export``/``multiset``."""
    if not _VAR_NAME.match(name):
        raise UnsafeValue(f"not a variable name: {name!r}")
    if not _VAR_VALUE.match(value):
        raise UnsafeValue(f"variable {name} value {value[:60]!r} is not a plain token")
    return f"{name}={value}"


def recording_vars(stereo: bool) -> str:
    """Per-recording variables (``uuid_record`` takes them in braces).
    ``RECORD_PRE_BUFFER_FRAMES=0``: FreeSWITCH otherwise buffers 25 frames, so a recording
    started < 0.5 s before a bridge loses its first audio and every recording its last ~0.5 s
    (captured: 3.50 s kept of a 4.00 s utterance). ``RECORD_STEREO`` puts the recorded leg's
    own audio (the customer) left and what it hears (the agent, our prompts) right."""
    return f"{{RECORD_STEREO={'true' if stereo else 'false'},RECORD_PRE_BUFFER_FRAMES=0}}"


def uuid_record(channel: str, action: str, file: str | Path, stereo: bool | None = None) -> str:
    """``uuid_record <uuid> start|stop|mask|unmask <path> [0 {vars}]`` (the api's argument)."""
    if action not in RECORD_ACTIONS:
        raise UnsafeValue(f"uuid_record action must be one of {RECORD_ACTIONS}")
    cmd = f"uuid_record {uuid(channel)} {action} {path(file)}"
    if action == "start" and stereo is not None:
        cmd += f" 0 {recording_vars(stereo)}"
    return cmd


def uuid_setvar(channel: str, name: str, value: str | None) -> str:
    """``uuid_setvar <uuid> <name> [<value>]``; no value unsets the variable."""
    if value is None:
        variable(name, "")
        return f"uuid_setvar {uuid(channel)} {name}"
    return f"uuid_setvar {uuid(channel)} {variable(name, value).replace('=', ' ', 1)}"


def play_and_get_digits(prompt: str | Path, timeout_ms: int) -> str:
    """One key, one try: the prompt (any key barges in), then ``timeout_ms`` of waiting. Tries
    are the consent machine's business (it counts attempts and keeps every key as evidence)."""
    return (
        f"1 1 1 {int(timeout_ms)} # {path(prompt)} silence_stream://250 {DIGIT_VAR} {ANY_KEY} "
        f"{int(timeout_ms)}"
    )


def withdraw_binding(key: str) -> str:
    """``bind_digit_action <realm>,<key>,exec[H]:execute_extension,<target>``: one DTMF key on
    the leg it runs on. ``bind_digit_action`` splits its argument on commas, so the action is an
    extension (``event`` needs commas); ``exec[H]`` runs it in the leg's own thread without the
    hold music plain ``exec:`` plays to the bridged agent meanwhile (measured on 1.10.12). A
    leading ``~`` or ``=`` would make the key a regex or change matching: one plain key only."""
    if not _KEY.match(key):
        raise UnsafeValue(f"not one DTMF key: {key!r}")
    return f"{WITHDRAW_REALM},{key},exec[H]:execute_extension,{WITHDRAW_TARGET}"


def terminators(digits: str) -> str:
    """``playback_terminators``: which keys stop a ``playback`` (``none`` for none)."""
    if not digits:
        return "none"
    if not _DIGITS.match(digits):
        raise UnsafeValue(f"not DTMF digits: {digits!r}")
    return digits


def tone(kind: str = "refused") -> str:
    """A short tone for the agent (a refused feature code): two low beeps."""
    assert kind == "refused"
    return "tone_stream://L=2;%(150,100,400)"
