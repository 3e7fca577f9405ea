"""Command groups of the ``callconsent`` CLI; each module has ``register(subparsers)``."""

from callconsent.commands import (
    audit_cmd,
    config_cmd,
    db_cmd,
    dialplan_cmd,
    record_cmd,
    serve_cmd,
)

COMMAND_MODULES = [serve_cmd, config_cmd, db_cmd, record_cmd, audit_cmd, dialplan_cmd]
