"""Calls in progress, shared by both PBX adapters: the call book (each call's consent machine
driven against its PBX through a ``CallControl`` port), withdrawals the PBX marked while we
were away, orphaned calls after a restart, and the prompt catalog. Uses ``recorder.store``;
never imports a PBX adapter (they import it)."""
