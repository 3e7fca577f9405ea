"""Command groups of the ``callconsent`` CLI; each module has ``register(subparsers)``."""

from callconsent.commands import (
    audit_cmd,
    config_cmd,
    db_cmd,
    dialplan_cmd,
    doctor_cmd,
    keys_cmd,
    links_cmd,
    prompts_cmd,
    record_cmd,
    recordings_cmd,
    retention_cmd,
    serve_cmd,
    subject_cmd,
    users_cmd,
    web_cmd,
)

COMMAND_MODULES = [serve_cmd, config_cmd, db_cmd, record_cmd, audit_cmd, dialplan_cmd]
COMMAND_MODULES += [keys_cmd, recordings_cmd, retention_cmd, subject_cmd]
COMMAND_MODULES += [doctor_cmd, prompts_cmd, users_cmd, links_cmd, web_cmd]
