"""The daemon component named ``asterisk``: the FastAGI server and the AMI client(s).

Built by ``callconsent.daemon`` from the call book, the spool and the ``[asterisk]`` section.
Start order: AMI first (so the first consent call's recording can be tracked), then the
FastAGI listener. Stop order: stop accepting, let running sessions finish (an unfinished
dialogue leaves the call undecided, which the dialplan maps to ``unavailable``), let pending
recording closures finish, log out of AMI.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agi.adapter import AsteriskAdapter, AsteriskOptions
from agi.ami import AmiClient, AmiError, AmiUnavailable, PermissionDenied
from agi.protocol import UnsafeArgument, safe_token
from agi.server import FastAgiServer, ServerLimits
from recorder.finalize.spool import Spool
from recorder.live.callbook import CallBook

log = logging.getLogger("callconsent.agi")


class AsteriskServiceError(Exception):
    """The Asterisk adapter cannot start with this configuration."""


class AsteriskService:
    name = "asterisk"

    def __init__(
        self, calls: CallBook, spool: Spool, options: AsteriskOptions, prompt_dir: Path
    ) -> None:
        self.options = options
        ami = None
        if options.ami_user:
            ami = AmiClient(
                options.ami_host, options.ami_port, options.ami_user, options.ami_secret, name="ami"
            )
        system = None
        if options.ami_system_user:
            system = AmiClient(
                options.ami_host,
                options.ami_port,
                options.ami_system_user,
                options.ami_system_secret,
                events="off",
                name="ami-system",
            )
        self.adapter = AsteriskAdapter(
            calls, spool, options, prompt_dir, ami=ami, ami_system=system
        )
        calls.restorers["asterisk"] = self.adapter.restore
        if ami is not None:
            ami.on_event = self.adapter.on_ami_event
            ami.on_ready = self.adapter.on_ami_ready
        limits = ServerLimits(
            max_sessions=options.max_sessions,
            env_timeout_s=options.env_timeout_s,
            command_timeout_s=options.command_timeout_s,
        )
        self.server = FastAgiServer(self.adapter.route, options.agi_host, options.agi_port, limits)

    async def start(self) -> None:
        paths = (("spool", self.adapter.spool.path), ("prompts", self.adapter.prompt_dir))
        for what, path in paths:
            try:
                safe_token(str(path), f"the {what} directory")
            except UnsafeArgument as exc:
                raise AsteriskServiceError(
                    f"{exc}: Asterisk is given this path in AGI commands; use a path of letters, "
                    "digits and . _ - / only"
                ) from None
        for client in (self.adapter.ami, self.adapter.ami_system):
            if client is not None and not await client.start():
                log.warning(
                    "ami_not_ready",
                    extra={"kv": {"client": client.name, "hint": "retrying in the background"}},
                )
        if self.adapter.ami_system is not None and not await self._system_user_can_start():
            self.adapter.ami_system = None
        if self.adapter.ami is None:
            log.warning(
                "ami_disabled",
                extra={
                    "kv": {
                        "hint": "without [asterisk] ami_user, agent pause/stop/discard and the "
                        "closing of recordings at hangup do not work"
                    }
                },
            )
        await self.server.start()

    async def _system_user_can_start(self) -> bool:
        """The opt-in user must really have write=system: a MixMonitor on a channel that does
        not exist answers "No such channel" if it may, "Permission denied" if not."""
        system = self.adapter.ami_system
        assert system is not None
        try:
            await system.action("MixMonitor", Channel="callconsent-permission-probe", File="x")
        except PermissionDenied:
            log.error(
                "ami_system_user_not_permitted",
                extra={"kv": {"user": system.user, "hint": "it needs write=system"}},
            )
            return False
        except (AmiError, AmiUnavailable, TimeoutError):
            pass
        return True

    async def stop(self) -> None:
        await self.server.stop(grace=min(5.0, self.options.command_timeout_s))
        await self.adapter.drain(5.0)
        self.adapter.stop_watching()
        for client in (self.adapter.ami, self.adapter.ami_system):
            if client is not None:
                await client.stop()
