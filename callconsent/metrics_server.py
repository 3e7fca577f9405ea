"""The ``/metrics`` endpoint: prometheus_client's HTTP server on 127.0.0.1, plus a collector
that reads recordings by state from the store at each scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from recorder.metrics import REGISTRY
from recorder.store.db import Database
from recorder.store.models import END_STATES, WORKING_STATES, RecordingState, recordings_by_state

log = logging.getLogger("callconsent.metrics")

S = RecordingState
#: encrypted, discarded and purged (models.END_STATES) grow with every call ever recorded, and
#: counting them at every scrape took ever longer (115 ms a scrape for 2 million recordings on
#: SQLite, docs/performance.md, stop 27): they are counted at most every END_STATES_EVERY_S.
#: The states a recording works through (calls in progress, the finalizer's backlog: what
#: alerts watch) at every scrape, by a range of the index as short as they are few.
END_STATES_EVERY_S = 300.0


def _counts(db: Database, states: tuple[RecordingState, ...]) -> dict[str, int]:
    with db.read() as s:
        return recordings_by_state(s, states)


class RecordingsByState(Collector):
    def __init__(self, db: Database, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self._clock = clock
        self._lock = threading.Lock()  # scrapes may overlap (one thread each)
        self._ends: dict[str, int] = {}
        self._ends_at = -float("inf")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "callconsent_recordings",
            "Recordings by state (encrypted, discarded and purged are counted at most every "
            f"{END_STATES_EVERY_S:.0f} s: they grow with every recording kept)",
            labels=["state"],
        )
        counts = _counts(self.db, WORKING_STATES)
        with self._lock:
            if self._clock() - self._ends_at >= END_STATES_EVERY_S:
                self._ends = _counts(self.db, END_STATES)
                self._ends_at = self._clock()
            counts.update(self._ends)
        for state in S:
            family.add_metric([state.value], counts[state.value])
        yield family


class MetricsServer:
    name = "metrics"

    def __init__(self, host: str, port: int, db: Database) -> None:
        self.host, self.port = host, port
        self._collector = RecordingsByState(db)
        self._server: Any = None

    async def start(self) -> None:
        REGISTRY.register(self._collector)
        try:
            self._server, _thread = start_http_server(self.port, addr=self.host, registry=REGISTRY)
        except OSError as exc:
            REGISTRY.unregister(self._collector)
            raise OSError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self.port = self._server.server_port
        log.info(
            "listening",
            extra={
                "kv": {"component": self.name, "url": f"http://{self.host}:{self.port}/metrics"}
            },
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        REGISTRY.unregister(self._collector)
