"""The ``/metrics`` endpoint: prometheus_client's HTTP server on 127.0.0.1, plus a collector
that reads recordings by state from the store at each scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from recorder.metrics import REGISTRY
from recorder.store.db import Database
from recorder.store.models import Recording, RecordingState

log = logging.getLogger("callconsent.metrics")


class RecordingsByState(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "callconsent_recordings", "Recordings by state", labels=["state"]
        )
        counts = dict.fromkeys((s.value for s in RecordingState), 0)
        with self.db.read() as s:
            for state, n in s.execute(
                select(Recording.state, func.count()).group_by(Recording.state)
            ):
                counts[state] = n
        for state, n in counts.items():
            family.add_metric([state], n)
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
