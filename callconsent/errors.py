"""Errors the CLI turns into one clear line and an exit status."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command could not do what was asked; the message says why and what to do."""

    exit_code = EXIT_FAILURE
