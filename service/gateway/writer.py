"""Group-commit writer: many concurrent answers share one write transaction.

One thread owns the write path. Requests enqueue their rows and await a future; the thread
takes everything queued (up to ``max_batch``), inserts it in one transaction, commits, and
resolves every future. While one commit runs, the next batch gathers, so no request waits
longer than about one commit, and throughput is bounded by commits/s x batch size rather than
commits/s. If a commit fails the store is marked unhealthy: callers fail closed (503) until a
probe succeeds again.

Requests on an event loop wait on a plain asyncio future: after a batch the thread wakes each
waiting loop once (one ``call_soon_threadsafe`` for the whole batch, not one per answer, as
``asyncio.wrap_future`` would), which is most of the cross-thread cost at low load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import SQLAlchemyError

from service.db.inserts import Copy, Insert, PerTable
from service.errors import StoreUnavailable

log = logging.getLogger("provenant.writer")

Rows = dict[Table, list[dict[str, Any]]]
# how the writer tells a caller its rows are durable (and in a transaction of how many answers):
# a thread-side future (``submit``) or an asyncio future with its loop (``commit``)
Waiter = cf.Future[int] | tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]
_STOP = object()


class AuditWriter:
    """Commits batches of rows (several tables per answer) in single transactions."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 512,
        copy_from: int = 4,
        probe_interval_s: float = 1.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._engine = engine
        self.db_system = engine.dialect.name  # "postgresql" / "sqlite", as telemetry names them
        self._max_batch = max_batch
        self._probe_interval = probe_interval_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._on_batch = on_batch
        self._conn: Connection | None = None  # owned by the writer thread
        # rows straight to the driver as positional values (db.inserts), without SQLAlchemy's
        # per-row parameter processing. SQLite: a table with several rows per answer (policy
        # decisions, retrievals) as multi-row statements, since the driver hands the GIL to
        # the busy event loop and waits to get it back after every statement step (one per row
        # with executemany): under the finance bundle (8 decisions per answer) a batch took 12
        # instead of 22 ms, 4% more answers/s in an interleaved run; the record and log tables
        # (one row per answer) stay with executemany, which measured better for them (multi-row
        # made batches smaller, not faster overall). PostgreSQL: a batch of ``copy_from``
        # answers or more as a COPY per table (half the writer's CPU per answer of
        # SQLAlchemy's executemany, a prepared INSERT per row: see ``Copy``); a smaller one
        # with SQLAlchemy's INSERTs in one pipeline (BEGIN to COMMIT in one round trip, where a
        # COPY per table costs a round trip each: the latency of an answer alone)
        self._inserts = PerTable(Insert, engine.dialect) if self.db_system == "sqlite" else None
        self._copies = PerTable(Copy, engine.dialect) if self.db_system == "postgresql" else None
        self._copy_from = copy_from
        self.healthy = False
        self.batches = 0
        self.rows_committed = 0

    def start(self) -> None:
        """Probe the store once, then start the writer thread."""
        self.healthy = self._probe()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is queued and stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, rows: Rows) -> cf.Future[int]:
        """Queue an answer's rows; the future resolves (to the batch size) once committed."""
        fut: cf.Future[int] = cf.Future()
        if self._thread is None:
            fut.set_exception(StoreUnavailable("audit writer is not running"))
            return fut
        self._queue.put((rows, fut))
        return fut

    async def commit(self, rows: Rows) -> int:
        """Queue rows and wait until they are durable; raise StoreUnavailable otherwise.
        Returns how many answers shared the transaction.

        The rows are queued before the first suspension: a caller cancelled while waiting still
        gets its record written.
        """
        if self._thread is None:
            raise StoreUnavailable("audit writer is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._queue.put((rows, (loop, fut)))
        return await fut

    # -- the writer thread ------------------------------------------------------------------

    def probe(self) -> bool:
        """Check the store now; a success also clears an unhealthy state."""
        ok = self._probe()
        if ok:
            self.healthy = True
        return ok

    def _probe(self) -> bool:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError as exc:
            log.warning("lineage store unreachable: %s", type(exc).__name__)
            return False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self._probe_interval)
            except queue.Empty:
                if not self.healthy:
                    self.healthy = self._probe()
                continue
            batch: list[tuple[Rows, Waiter]] = []
            item = first
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _write(self, batch: list[tuple[Rows, Waiter]]) -> None:
        started = time.perf_counter()
        try:
            self._insert([rows for rows, _ in batch])
        except Exception as exc:  # the writer thread must survive anything
            if len(batch) > 1 and self._probe():
                # the store is up, so a row was at fault: retry one by one to isolate it
                for item in batch:
                    self._write([item])
                return
            self.healthy = self._probe()
            log.error("audit batch of %d failed: %s", len(batch), type(exc).__name__)
            error = StoreUnavailable(
                "lineage store unavailable; answer withheld"
                if not self.healthy
                else "the audit record could not be stored; answer withheld"
            )
            _settle(batch, error)
            return
        self.healthy = True
        self.batches += 1
        self.rows_committed += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
        _settle(batch, None)

    def _insert(self, answers: list[Rows]) -> None:
        merged: dict[Table, list[dict[str, Any]]] = {}
        for rows in answers:
            for table, values in rows.items():
                merged.setdefault(table, []).extend(values)
        # one long-lived connection: no pool checkout or pre-ping round trip per batch
        if self._conn is None:
            self._conn = self._engine.connect()
        conn = self._conn
        try:
            copies = self._copies if len(answers) >= self._copy_from else None
            with _pipeline(conn, copies is None), conn.begin():
                # parents before children: tables sorted by foreign-key depth
                for table in sorted(merged, key=_depth):
                    values = merged[table]
                    # several rows per answer (decisions, retrievals) repeat values
                    repeats = len(values) > len(answers)
                    if copies is not None:
                        copies.of(table).run(conn, values, repeats=repeats)
                    elif self._inserts is None:
                        conn.execute(table.insert(), values)
                    elif repeats:
                        self._inserts.of(table).run_multirow(conn, values)
                    else:
                        self._inserts.of(table).run(conn, values)
        except Exception:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()
            raise


def _pipeline(conn: Connection, wanted: bool) -> contextlib.AbstractContextManager[Any]:
    """PostgreSQL, unless the batch goes by COPY (which a pipeline cannot carry): the batch's
    BEGIN, INSERTs and COMMIT sent in one go (psycopg's pipeline mode) and their results read
    once, at the commit: one round trip per batch instead of one per statement. Any error
    still surfaces, at the latest when the commit syncs."""
    if not wanted or conn.dialect.name != "postgresql":
        return contextlib.nullcontext()  # SQLite: an in-process driver, no round trips
    driver = conn.connection.driver_connection
    assert driver is not None, "a live connection"
    pipeline: contextlib.AbstractContextManager[Any] = driver.pipeline()
    return pipeline


def _settle(batch: list[tuple[Rows, Waiter]], error: BaseException | None) -> None:
    """Resolve a batch's waiters: thread futures here, asyncio ones with one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[int]]] = {}
    size = len(batch)
    for _, waiter in batch:
        if isinstance(waiter, cf.Future):
            if not waiter.done():
                if error is None:
                    waiter.set_result(size)
                else:
                    waiter.set_exception(error)
        else:
            by_loop.setdefault(waiter[0], []).append(waiter[1])
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, futures, error, size)


def _resolve(futures: list[asyncio.Future[int]], error: BaseException | None, size: int) -> None:
    # on the futures' loop; a future whose awaiting task was cancelled is already done
    for fut in futures:
        if not fut.done():
            if error is None:
                fut.set_result(size)
            else:
                fut.set_exception(error)


@functools.cache
def _depth(table: Table) -> int:
    """How many foreign-key hops separate a table from the roots (parents first)."""
    parents = {fk.column.table for fk in table.foreign_keys if fk.column.table is not table}
    return 0 if not parents else 1 + max(_depth(p) for p in parents)
