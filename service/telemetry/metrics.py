"""Prometheus metrics, served at ``GET /metrics`` (prometheus-client).

Each app has its own registry (no process-global one), so tests and several apps in one process
do not mix their counts. Under ``provenant serve --workers N`` (N > 1) the workers are separate
processes: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, every worker
writes its counts there and any worker's ``/metrics`` answers for all of them
(prometheus-client's multiprocess mode).

Cardinality is bounded by configuration, never by clients: ``route`` is the HTTP route template
(``/v1/audit/records/{record_id}``, or ``unmatched``) or the gateway route name from
``provenant.yaml``; ``status`` is an HTTP status or a record status; ``policy`` a policy id of
the loaded bundle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service.db.base import utcnow
from service.integrity.log import Sealed, backlog

log = logging.getLogger("provenant.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_COMMIT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def multiprocess() -> bool:
    """Whether prometheus-client runs in multiprocess mode in this process."""
    return MULTIPROC_ENV in os.environ


class Metrics:
    """The gateway's instruments and their exposition."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._live: list[Collector] = []
        # labelled children by label values: one dict look-up per request instead of a
        # ``labels()`` call (argument checks, string conversions, a lock) per instrument
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._answer: dict[tuple[str, str, bool], tuple[Any, Any, Any, Any]] = {}
        self._decision: dict[tuple[str, str, str], Any] = {}
        # policy decisions counted per stage's tuple of labels, and how many of each were added
        # to the counter (``count_decisions``, ``flush_decisions``)
        self._decision_counts: dict[tuple[tuple[str, str, str], ...], int] = {}
        self._decisions_flushed: dict[tuple[tuple[str, str, str], ...], int] = {}
        self._flush_lock = threading.Lock()
        self.http_requests = Counter(
            "provenant_http_requests",
            "HTTP requests served, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "provenant_http_request_duration_seconds",
            "Time from request to the end of the response (a stream's last byte)",
            ["method", "route", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.answers = Counter(
            "provenant_answers",
            "Answers recorded, by gateway route and record status (ok, upstream_error, ...)",
            ["route", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "provenant_answer_tokens",
            "Tokens the upstream reported, by gateway route and type (input, output)",
            ["route", "type"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "provenant_upstream_duration_seconds",
            "Upstream call time by gateway route (streams: until the upstream's last event)",
            ["route", "stream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.commit_duration = Histogram(
            "provenant_audit_commit_duration_seconds",
            "Duration of one group-commit transaction of audit records",
            buckets=_COMMIT,
            registry=r,
        )
        self.commit_batch = Histogram(
            "provenant_audit_commit_batch_size",
            "Answers committed together in one transaction",
            buckets=_BATCH,
            registry=r,
        )
        self.policy_decisions = Counter(
            "provenant_policy_decisions",
            "Policy decisions by policy id, stage (pre, post) and outcome",
            ["policy", "stage", "outcome"],
            registry=r,
        )
        self.seals = Counter(
            "provenant_sealer_checkpoints",
            "Checkpoints this process signed (only the lock holder seals)",
            registry=r,
        )
        self.sealed_entries = Counter(
            "provenant_sealer_entries",
            "Log entries this process sealed",
            registry=r,
        )
        self.last_seal = Gauge(
            "provenant_sealer_last_seal_timestamp_seconds",
            "When this process last signed a checkpoint (Unix time)",
            registry=r,
            multiprocess_mode="max",
        )
        if not multiprocess():
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # -- what the gateway reports ------------------------------------------------------------

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request served."""
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            label = method if method in _METHODS else "_OTHER"  # as the HTTP conventions do
            code = str(status)
            children = self._http[key] = (
                self.http_requests.labels(label, route, code),
                self.http_duration.labels(label, route, code),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_answer(
        self,
        route: str,
        status: str,
        *,
        stream: bool,
        upstream_s: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        """One answer recorded (any status), with its upstream time and token usage."""
        key = (route, status, stream)
        children = self._answer.get(key)
        if children is None:
            children = self._answer[key] = (
                self.answers.labels(route, status),
                self.upstream_duration.labels(route, "true" if stream else "false"),
                self.tokens.labels(route, "input"),
                self.tokens.labels(route, "output"),
            )
        children[0].inc()
        if upstream_s is not None:
            children[1].observe(upstream_s)
        if input_tokens:
            children[2].inc(input_tokens)
        if output_tokens:
            children[3].inc(output_tokens)

    def observe_commit(self, batch_size: int, seconds: float) -> None:
        """One group-commit transaction (the writer's ``on_batch``; called on its thread)."""
        self.commit_batch.observe(batch_size)
        self.commit_duration.observe(seconds)

    def count_decisions(self, labels: tuple[tuple[str, str, str], ...]) -> None:
        """One stage's decisions about one answer, as (policy id, stage, outcome) each.

        Counted here in a plain dict by the whole tuple (one look-up per stage, not a locked
        counter per decision: eight of those cost ~5 us per answer of the finance bundle) and
        added to ``provenant_policy_decisions`` by ``flush_decisions``, which a scrape calls
        first. Call it from one thread (the event loop's)."""
        counts = self._decision_counts
        counts[labels] = counts.get(labels, 0) + 1

    def flush_decisions(self) -> None:
        """Add the decisions counted since the last flush to their Prometheus counters (from
        any thread: only ever reads what ``count_decisions`` writes)."""
        with self._flush_lock:
            flushed = self._decisions_flushed
            for labels, total in list(self._decision_counts.items()):
                new = total - flushed.get(labels, 0)
                if not new:
                    continue
                flushed[labels] = total
                for key in labels:
                    child = self._decision.get(key)
                    if child is None:
                        child = self._decision[key] = self.policy_decisions.labels(*key)
                    child.inc(new)

    def observe_seal(self, done: list[Sealed]) -> None:
        """A sealing run of this process signed ``done`` checkpoints (``seal_periodically``)."""
        self.seals.inc(len(done))
        self.sealed_entries.inc(sum(s.entries for s in done))
        self.last_seal.set(utcnow().timestamp())

    def watch_store(self, engine: Engine, writer: Any) -> None:
        """Report, at scrape time, whether the lineage store takes writes and how far the
        sealer lags (``writer``: anything with a ``healthy`` flag, the AuditWriter)."""
        self._live.append(_StoreCollector(engine, writer))

    # -- exposition --------------------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for (Prometheus text or OpenMetrics).
        Reads the database (sealer backlog): call it off the event loop."""
        self.flush_decisions()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(_Exposed(self)), content_type


class _Exposed:
    """What one scrape shows: this registry (or every worker's, in multiprocess mode) and the
    live collectors, read now."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        if multiprocess():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            yield from merged.collect()
        else:
            yield from self._metrics.registry.collect()
        for collector in self._metrics._live:
            yield from collector.collect()


class _StoreCollector(Collector):
    def __init__(self, engine: Engine, writer: Any) -> None:
        self._engine = engine
        self._writer = writer

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "provenant_lineage_store_up",
            "1 if this process's audit writer can commit (answers are served), else 0",
            value=1 if self._writer.healthy else 0,
        )
        yield up
        try:
            with self._engine.connect() as conn:
                pending, oldest = backlog(conn)
        except SQLAlchemyError as exc:
            log.warning("sealer backlog not readable: %s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "provenant_log_unsealed_entries",
            "Log entries committed but not yet sealed into a signed checkpoint (cluster-wide)",
            value=pending,
        )
        yield GaugeMetricFamily(
            "provenant_log_oldest_unsealed_age_seconds",
            "Age of the oldest unsealed entry, 0 if none: the sealer's lag (cluster-wide)",
            value=_age(oldest),
        )


def _age(oldest: datetime | None) -> float:
    return 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())


async def flush_periodically(metrics: Metrics, interval_s: float = 1.0) -> None:
    """Flush counted policy decisions every ``interval_s``: under ``--workers N`` a scrape
    reaches one worker, whose flush cannot add the others' counts (each adds its own)."""
    while True:
        await asyncio.sleep(interval_s)
        metrics.flush_decisions()
