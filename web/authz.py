"""Who may do what in the web console and the API: the one place that decides. Every route
is registered with a permission (:func:`web.routing.guarded`); object access (a call, a
recording) goes through :func:`may_see_call`, so an agent cannot reach another agent's call
by changing an id in the URL.

Roles are the CLI's: agent (only calls where they are the agent), supervisor (list, evidence,
play, share), dpo (also hold, delete, subject export and erasure, the audit log), admin (also
users and tokens).
"""

from __future__ import annotations

from sqlalchemy import Select

from recorder.store.models import Call
from web.accounts import Person

PUBLIC = "public"  # no login: the login page, share links, static files, the API document
SIGNED_IN = "signed_in"  # any user: their own session, the home page

_ALL = frozenset({"agent", "supervisor", "dpo", "admin"})
_SUPERVISOR_UP = frozenset({"supervisor", "dpo", "admin"})
_DPO_UP = frozenset({"dpo", "admin"})

#: permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    SIGNED_IN: _ALL,
    "calls.list": _ALL,
    "calls.view": _ALL,
    "recording.play": _ALL,
    "recording.download": _SUPERVISOR_UP,
    "recording.share": _SUPERVISOR_UP,
    "dashboard.view": _SUPERVISOR_UP,
    "recording.hold": _DPO_UP,
    "recording.delete": _DPO_UP,
    "subject.export": _DPO_UP,
    "subject.erase": _DPO_UP,
    "audit.view": _DPO_UP,
    "users.manage": frozenset({"admin"}),
}
#: roles that see a caller's full number (others see it masked, like the logs)
FULL_NUMBER_ROLES = _DPO_UP


def allowed(person: Person | None, permission: str) -> bool:
    if permission == PUBLIC:
        return True
    if person is None or person.disabled:
        return False
    return person.role in PERMISSIONS[permission]


def only_own_calls(person: Person) -> bool:
    return person.role == "agent"


def may_see_call(person: Person, call: Call) -> bool:
    return not only_own_calls(person) or (call.agent is not None and call.agent == person.name)


def visible_calls(query: Select, person: Person) -> Select:  # type: ignore[type-arg]
    """Narrow a query over ``calls`` to what ``person`` may see."""
    return query.where(Call.agent == person.name) if only_own_calls(person) else query


def sees_full_numbers(person: Person) -> bool:
    return person.role in FULL_NUMBER_ROLES
