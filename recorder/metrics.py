"""Prometheus metrics, in one registry the daemon serves on 127.0.0.1 (``[metrics]``).

Defined here so every part (adapters, call driver, finalizer, retention) counts into the same
place; values that are state rather than events (recordings by state) are read from the store
when scraped, by the daemon.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CONSENT_DECISIONS = Counter(
    "callconsent_consent_decisions",
    "Consent decisions, by status and campaign",
    ["status", "campaign"],
    registry=REGISTRY,
)
CONSENT_CHANGES = Counter(
    "callconsent_consent_changes",
    "Later consent changes (withdrawal, agent discard, attestation)",
    ["status", "cause"],
    registry=REGISTRY,
)
AGENT_COMMANDS = Counter(
    "callconsent_agent_commands",
    "Agent recording commands, by verb and result",
    ["verb", "result"],
    registry=REGISTRY,
)
FINALIZE_SECONDS = Histogram(
    "callconsent_finalize_seconds",
    "Time from a recording closed to encrypted, plaintext gone",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
FINALIZE_FAILURES = Counter(
    "callconsent_finalize_failures",
    "Finalizations that failed (retried later)",
    ["reason"],
    registry=REGISTRY,
)
PURGED = Counter(
    "callconsent_purged_recordings", "Recordings purged by retention", registry=REGISTRY
)
PBX_CONNECTED = Gauge(
    "callconsent_pbx_connected",
    "1 while our client is logged in to the PBX, else 0",
    ["pbx", "link"],
    registry=REGISTRY,
)
KEY_EPOCH_WEEKS_LEFT = Gauge(
    "callconsent_key_epoch_weeks_ahead",
    "Weeks the key epochs reach beyond what a recording made now needs (warns below 8)",
    registry=REGISTRY,
)
STORE_UNAVAILABLE = Gauge(
    "callconsent_store_unavailable",
    "1 while the database cannot be reached (calls are not recorded meanwhile), else 0",
    registry=REGISTRY,
)
PLAINTEXT_OVERDUE = Gauge(
    "callconsent_plaintext_overdue",
    "Recordings of this host still unencrypted in the spool longer than the finalizer's retry "
    "window ([recorder] overdue_after_s) after they ended; alert above 0",
    registry=REGISTRY,
)
SPOOL_FULL = Gauge(
    "callconsent_spool_full",
    "1 while the spool's file system has less free space than [recorder] spool_full_bytes (the "
    "PBX cannot write the audio of calls in progress), else 0",
    registry=REGISTRY,
)
POSSIBLY_TRUNCATED = Counter(
    "callconsent_recordings_possibly_truncated",
    "Recordings encrypted that were open while the spool's file system was full",
    registry=REGISTRY,
)
STORE_TRANSACTIONS = Counter(
    "callconsent_store_transactions",
    "Store transactions, by how they ended (commit: a write; rollback: a read). Counted only "
    "with CALLCONSENT_STORE_STATS=1 (bench/daemon_load.py sets it)",
    ["end"],
    registry=REGISTRY,
)
