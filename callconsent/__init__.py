"""The application shell: configuration, the command line, and the daemon that wires the
Asterisk and FreeSWITCH adapters, the recorder and retention into one process."""

__version__ = "0.1.0"
