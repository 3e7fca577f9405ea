"""The inbound ESL client: our own connection to FreeSWITCH's event socket (127.0.0.1:8021),
kept up with reconnects, subscribed to the events that matter after the dialogue, and the path
for out-of-band ``api`` commands (``uuid_record``, ``uuid_setvar``).

Authentication is ``userauth user@domain:password`` when a user is configured (an ESL user
restricted with ``esl-allowed-api``/``esl-allowed-events``, see ``dialplan/freeswitch``), else
``auth password``. Either credential is PBX-level trust: the captures show a restricted user
can still reach a shell through ``sendmsg``; this client only ever sends the commands built in
:mod:`esl_listener.commands`.

Events are handled in order per call (by ``Channel-Call-UUID``) and concurrently across calls,
so a slow store write for one call never delays another call's RECORD_STOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

from esl_listener.connection import (
    ApiReply,
    AuthFailed,
    ConnectionClosed,
    EslConnection,
    EslError,
    open_inbound,
)
from esl_listener.protocol import Event
from recorder import metrics
from recorder.store import outage

log = logging.getLogger("callconsent.esl.inbound")

#: One ``event plain`` command each, so a user missing one permission still gets the others
#: (FreeSWITCH stops at the first refused name and says ``-ERR permission denied``).
# the APIs the daemon runs (uuid_exists and uuid_getvar: the check after each login; db: the
# withdraw extension's mark, esl_listener.marks)
API_USED = (
    "uuid_record",
    "uuid_setvar",
    "uuid_kill",
    "uuid_broadcast",
    "uuid_exists",
    "uuid_getvar",
    "db",
)
WITHDRAW_EVENT = "CUSTOM consent::withdraw"  # the caller's withdraw key (consent.py binds it)
SUBSCRIPTIONS = (
    "RECORD_START",
    "RECORD_STOP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_BRIDGE",
    "CUSTOM consent::agent_cmd consent::listen",
    WITHDRAW_EVENT,
)
#: what :meth:`esl_listener.calls.CallRegistry.on_event` acts on; only these are parsed and
#: queued. RECORD_START is subscribed but read by no one here: the outbound session's own
#: ``api uuid_record`` reply says the recording runs (it was queued, with a worker task, for
#: every recording on the PBX, and then did nothing)
HANDLED = frozenset({"RECORD_STOP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_BRIDGE", "CUSTOM"})


class EslUnavailable(EslError, ConnectionError):
    """The inbound connection is down and did not come back in time (a ConnectionError, so
    PBX-neutral code can tell "the PBX is away" from a fault of its own)."""


class InboundClient:
    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        user: str | None = None,
        on_event: Callable[[Event], Awaitable[None]],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        shard: Callable[[Event], str] = lambda e: e.call_uuid,
        command_timeout: float = 10.0,
        wait_connected_s: float = 5.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self._password, self._user = password, user or None
        self.on_event = on_event
        self.on_connected = on_connected  # after each (re)login: catch up on what was missed
        self.shard = shard
        self.command_timeout = command_timeout
        self.wait_connected_s = wait_connected_s
        self.backoff = (backoff_min_s, backoff_max_s)
        self.connected = asyncio.Event()
        self.refused_subscriptions: list[str] = []
        self.connections = 0
        self._conn: EslConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._queues: dict[str, deque[Event]] = {}
        self._workers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="esl-inbound")
        log.info(
            "connecting",
            extra={"kv": {"component": "esl-inbound", "addr": f"{self.host}:{self.port}"}},
        )

    async def stop(self) -> None:
        task = self._task
        # asyncio.wait_for before Python 3.12 may swallow a cancel that arrives as the awaited
        # connect or reply completes (gh-86296): the loop would go on reconnecting for ever,
        # so cancel until it has really stopped
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()
        if self._conn is not None:
            await self._conn.close("daemon stopping")
        if self._workers:
            await asyncio.wait(set(self._workers), timeout=5.0)

    async def api(self, command: str) -> ApiReply:
        return await self._over_connection(lambda conn: conn.api(command))

    async def bgapi(self, command: str) -> ApiReply:
        return await self._over_connection(lambda conn: conn.bgapi(command))

    async def _over_connection(
        self, call: Callable[[EslConnection], Awaitable[ApiReply]]
    ) -> ApiReply:
        conn = await self._connection()
        try:
            return await call(conn)
        except ConnectionClosed as exc:
            raise EslUnavailable(str(exc)) from None

    async def _connection(self) -> EslConnection:
        try:
            await asyncio.wait_for(self.connected.wait(), self.wait_connected_s)
        except TimeoutError:
            raise EslUnavailable(
                f"no ESL connection to {self.host}:{self.port} within {self.wait_connected_s:g}s"
            ) from None
        assert self._conn is not None
        return self._conn

    async def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                conn = await open_inbound(
                    self.host,
                    self.port,
                    self._password,
                    user=self._user,
                    timeout_s=self.command_timeout,
                )
            except AuthFailed as exc:
                log.error("esl_auth_failed", extra={"kv": {"error": str(exc)}})
                delay = self.backoff[1]
            except (OSError, EslError, TimeoutError) as exc:
                log.warning(
                    "esl_connect_failed",
                    extra={
                        "kv": {"addr": f"{self.host}:{self.port}", "error": str(exc) or "timeout"}
                    },
                )
            else:
                delay = self.backoff[0]
                await self._serve(conn)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff[1])

    async def _serve(self, conn: EslConnection) -> None:
        conn.add_listener(self._enqueue, HANDLED)
        try:
            self.refused_subscriptions = []
            for names in SUBSCRIPTIONS:
                reply = await conn.send(f"event plain {names}")
                if not reply.reply_text.startswith("+OK"):
                    self.refused_subscriptions.append(names)
            if self.refused_subscriptions:
                log.error(
                    "esl_events_refused",
                    extra={
                        "kv": {
                            "events": ",".join(self.refused_subscriptions),
                            "hint": "add them to the ESL user's esl-allowed-events "
                            "(dialplan/freeswitch/callconsent-esl-user.xml)",
                        }
                    },
                )
            self._conn = conn
            self.connections += 1
            self.connected.set()
            metrics.PBX_CONNECTED.labels("freeswitch", "esl").set(1)
            log.info("esl_connected", extra={"kv": {"addr": f"{self.host}:{self.port}"}})
            if self.on_connected is not None:
                # FreeSWITCH keeps no events for a client that was away: a worker, so that
                # the check's own api commands can run over this connection
                task = asyncio.create_task(self.on_connected())
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
            await conn.closed.wait()
            log.warning("esl_disconnected", extra={"kv": {"reason": conn.close_reason}})
        except EslError as exc:
            log.warning("esl_session_failed", extra={"kv": {"error": str(exc)}})
        finally:
            self.connected.clear()
            metrics.PBX_CONNECTED.labels("freeswitch", "esl").set(0)
            await conn.close()

    # -- ordered per call, concurrent across calls ---------------------------------------------

    def _enqueue(self, event: Event) -> None:
        if event.name not in HANDLED:
            return
        key = self.shard(event)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            task = asyncio.create_task(self._drain(key, queue))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        queue.append(event)

    async def _drain(self, key: str, queue: deque[Event]) -> None:
        retry = 0
        try:
            while queue:
                event = queue.popleft()
                try:
                    await self.on_event(event)
                    retry = 0
                except Exception as exc:
                    if not outage.is_unavailable(exc):
                        log.exception("esl_event_failed", extra={"kv": {"event": event.name}})
                        continue
                    # the store is out of reach: said once for all calls; this call's events
                    # wait, in order, and are handled once it is back (a hangup is not lost)
                    outage.OUTAGE.report(exc, f"ESL {event.name}")
                    queue.appendleft(event)
                    await asyncio.sleep(outage.retry_delay(retry))
                    retry += 1
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
