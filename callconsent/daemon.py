"""`callconsent serve`: one asyncio process wiring the enabled parts together.

The parts are :class:`Component` objects started in order and stopped in reverse: the
finalizer first (so nothing the adapters hand over is lost), then the FastAGI server and AMI
client (Asterisk), then the ESL outbound server and inbound client (FreeSWITCH). SIGTERM and
SIGINT stop the daemon gracefully; SIGHUP re-reads the config and applies new policies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from callconsent import config as config_mod
from callconsent import heap, systemd
from callconsent.app import App

log = logging.getLogger("callconsent.daemon")


class Component(Protocol):
    """A long-running part of the daemon."""

    name: str

    async def start(self) -> None:
        """Start serving; return once listening (log where), raise if it cannot."""

    async def stop(self) -> None:
        """Stop serving; finish or safely abandon in-flight work (it is retried on start)."""


ComponentFactory = Callable[[App], "Component | None"]

#: Factories that build the daemon's components; each returns None when its part is disabled.
#: The adapters and the recorder add theirs here.
COMPONENT_FACTORIES: list[ComponentFactory] = []


def build_components(app: App) -> list[Component]:
    built = [factory(app) for factory in COMPONENT_FACTORIES]
    return [c for c in built if c is not None]


def _control(app: App) -> Component:
    from callconsent.control import SOCKET_NAME, ControlServer

    return ControlServer(app.config.data_dir / SOCKET_NAME, app.calls)


COMPONENT_FACTORIES.append(_control)


def _finalizer(app: App) -> Component:
    from callconsent.recordings import finalizer

    return finalizer(app)


COMPONENT_FACTORIES.insert(0, _finalizer)  # first up, last down: nothing handed over is lost


def _freeswitch(app: App) -> Component | None:
    """The ESL outbound server and inbound client (``[freeswitch] enabled = true``)."""
    if not app.config.freeswitch.enabled:
        return None
    from esl_listener.service import FreeswitchConfigError, FreeswitchService

    try:
        return FreeswitchService.from_config(app.calls, app.spool, app.config.freeswitch)
    except FreeswitchConfigError as exc:
        key, _, message = str(exc).partition(": ")
        raise config_mod.ConfigError(app.config.source, key, message) from None


COMPONENT_FACTORIES.append(_freeswitch)


def _asterisk(app: App) -> Component | None:
    section = app.config.asterisk
    if not section.enabled:
        return None
    from agi.adapter import AsteriskOptions
    from agi.service import AsteriskService

    options = AsteriskOptions.from_settings(section)
    return AsteriskService(app.calls, app.spool, options, app.config.prompt_dir)


COMPONENT_FACTORIES.append(_asterisk)


async def run(app: App, *, on_ready: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_signal, sig, stopping)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    components = build_components(app)
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        if not any(c.name in ("asterisk", "freeswitch") for c in components):
            log.warning(
                "no_pbx_adapter_enabled",
                extra={"kv": {"hint": "enable [asterisk] or [freeswitch] in the config"}},
            )
        names = ",".join(c.name for c in started) or "none"
        heap.freeze_startup_objects()  # full collections no longer walk start-up's objects
        log.info("ready", extra={"kv": {"components": names}})
        systemd.notify(f"READY=1\nSTATUS=serving: {names}")
        if on_ready is not None:
            on_ready()
        await stopping.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping", extra={"kv": {"components": len(started)}})
        for component in reversed(started):
            try:
                await asyncio.wait_for(component.stop(), app.config.daemon.shutdown_grace_s)
                log.info("component_stopped", extra={"kv": {"component": component.name}})
            except Exception:
                log.exception("component_stop_failed", extra={"kv": {"component": component.name}})
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _stop_signal(sig: signal.Signals, stopping: asyncio.Event) -> None:
    log.info("signal", extra={"kv": {"signal": sig.name, "action": "graceful stop"}})
    stopping.set()


def _watchdog(app: App) -> Component:
    return systemd.Watchdog()


def _metrics(app: App) -> Component | None:
    from callconsent.metrics_server import MetricsServer

    m = app.config.metrics
    return MetricsServer(m.host, m.port, app.db) if m.enabled else None


def _retention(app: App) -> Component:
    from callconsent.recordings import retention
    from callconsent.retention_pass import RetentionPass

    return RetentionPass(retention(app), app.config.retention.interval_s)


def _heap_trim(app: App) -> Component:
    return heap.HeapTrim()


COMPONENT_FACTORIES += [_watchdog, _metrics, _retention, _heap_trim]


def _reload(app: App) -> None:
    """Re-read the config file; apply it only if it is valid (policies take effect for new
    calls). Settings that need a restart (listen addresses, database) are reported."""
    source = None if app.config.source == config_mod.EMBEDDED else app.config.source
    systemd.notify("RELOADING=1")
    try:
        new = config_mod.load(source)
    except config_mod.ConfigError as exc:
        log.error("reload_rejected", extra={"kv": {"error": str(exc)}})
        systemd.notify("READY=1")
        return
    restart_needed = [
        name
        for name in (
            "database",
            "asterisk",
            "freeswitch",
            "spool",
            "keys",
            "recorder",
            "retention",
            "metrics",
            "daemon",
        )
        if getattr(new, name) != getattr(app.config, name)
    ]
    app.config = new
    app.prompts.reload()  # prompts rebuilt or replaced since: hashed again, heard at once
    log.info(
        "reloaded",
        extra={"kv": {"source": new.source, "restart_needed_for": ",".join(restart_needed) or "-"}},
    )
