"""The log in SQL: reading its tree, and the sealer that extends it and signs checkpoints.

Writers never touch the log: an answer's transaction adds its row to ``log_pending``. The sealer
(one at a time: a PostgreSQL advisory lock, or a file lock beside the SQLite database) takes
pending entries in id order (UUIDv7, so time order), gives them the next log indexes, stores the
perfect-subtree hashes they complete (so proofs need O(log n) reads) and signs one checkpoint
per batch, all in one transaction. Within one checkpoint's range, entries are therefore in
ascending id order: ``provenant verify`` uses that to name reordered entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text
from sqlalchemy.engine import make_url

from service.db.base import utcnow
from service.db.inserts import Insert, PerTable
from service.integrity import merkle
from service.integrity.models import Checkpoint, LogEntry, LogPending, SigningKey, TreeNode
from service.integrity.signing import Signer, b64url, checkpoint_body

_T = TypeVar("_T")
log = logging.getLogger("provenant.sealer")

_ADVISORY_KEY = 0x70766E7453454C  # "pvntSEL": the sealer's PostgreSQL advisory lock


def tree_size(conn: Connection) -> int:
    """How many entries the log holds."""
    size = conn.execute(select(func.max(LogEntry.idx))).scalar()
    return 0 if size is None else int(size) + 1


def backlog(conn: Connection) -> tuple[int, datetime | None]:
    """How many entries wait for the sealer, and when the oldest of them was written (the
    sealer's lag, whichever process holds the lock: ``log_pending`` is the whole cluster's)."""
    count, oldest = conn.execute(select(func.count(), func.min(LogPending.created_at))).one()
    return int(count), oldest


class StoredTree:
    """MTH and proofs over the stored tree (leaf hashes and perfect-subtree nodes)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cache: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._cache:
            if level == 0:
                value = self._conn.execute(
                    select(LogEntry.leaf_sha256).where(LogEntry.idx == index)
                ).scalar()
                found = None if value is None else bytes.fromhex(value)
            else:
                found = self._conn.execute(
                    select(TreeNode.hash).where(TreeNode.level == level, TreeNode.idx == index)
                ).scalar()
            if found is None:
                raise LookupError(f"the log has no node ({level}, {index})")
            self._cache[key] = found
        return self._cache[key]

    def mth(self, lo: int, hi: int) -> bytes:
        return merkle.fold(lo, hi, self.node)

    def border(self, size: int) -> merkle.CompactRange:
        nodes = [self.node(lvl, i) for lvl, i in merkle.CompactRange.border_of(size)]
        return merkle.CompactRange(size, nodes)


@dataclass(frozen=True)
class Sealed:
    """What one sealing batch did."""

    entries: int
    tree_size: int
    root: bytes


class Sealer:
    """Extends the log with pending entries and signs a checkpoint per batch."""

    def __init__(self, engine: Engine, signer: Signer, *, batch: int = 50_000) -> None:
        self._engine = engine
        self._signer = signer
        self._batch = batch
        url = make_url(str(engine.url))
        self._sqlite = url.get_backend_name() == "sqlite"
        self._inserts = PerTable(Insert, engine.dialect) if self._sqlite else None
        self._lock_path: Path | None = None
        if self._sqlite and url.database and url.database != ":memory:":
            self._lock_path = Path(url.database + ".sealer.lock")

    def register_key(self) -> None:
        """Record the signing key's public half (once) so verifiers find it after rotation."""
        with self._engine.begin() as conn:
            known = conn.execute(
                select(SigningKey.kid).where(SigningKey.kid == self._signer.kid)
            ).scalar()
            if known is None:
                conn.execute(
                    insert(SigningKey).values(
                        kid=self._signer.kid,
                        public_key=b64url(self._signer.public),
                        created_at=utcnow(),
                    )
                )

    def seal(self) -> list[Sealed]:
        """Seal what is pending now, batch by batch; [] if nothing was pending or another
        sealer holds the lock.

        A batch smaller than the batch size took everything that was pending, so the run ends
        there: what arrived while it was sealed waits for the next run. (Looping until nothing
        is pending never ended under steady traffic: a checkpoint every few entries, back to
        back, each a signature, a write transaction and on SQLite the write lock.)"""
        done: list[Sealed] = []
        with self._locked() as acquired:
            if not acquired:
                return done
            while True:
                sealed = self._seal_batch()
                if sealed is None:
                    return done
                done.append(sealed)
                if sealed.entries < self._batch:
                    return done

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """The SQLite store's sealer lock, if no other sealer (this process's or another's)
        holds it: an exclusive ``flock`` on a file beside the database, given up on close and
        by the kernel when its holder dies.

        The standard library's ``fcntl.flock`` rather than the ``filelock`` package: from 3.30
        on, importing ``filelock`` installs a Python audit hook (``sys.addaudithook``, never
        removable) that then runs on every audited operation of the whole process, each
        ``id()`` call included — measured at ~0.8 us per call, ~20 us per answer under the
        finance bundle, all to guard a lock taken once per seal."""
        if self._lock_path is None:
            yield True
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _seal_batch(self) -> Sealed | None:
        started = time.perf_counter()
        with self._engine.connect() as conn:
            if (
                not self._sqlite
                and not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY}
                ).scalar()
            ):
                conn.rollback()
                return None
            # SQLite has one write lock for the whole database, and every answer's commit
            # needs it: the reading, hashing and signing happen before it is taken (the
            # sealer's file lock keeps other sealers out, so the log cannot change meanwhile;
            # the size is checked again under the write lock all the same)
            batch = self._prepare(conn)
            if batch is None:
                conn.rollback()
                return None
            entries, nodes, rng, note = batch
            size, root = rng.size - len(entries), rng.root()
            locked = time.perf_counter()
            if self._sqlite:
                conn.rollback()
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                locked = time.perf_counter()  # the wait for the lock is not holding it
                if tree_size(conn) != size:
                    conn.rollback()
                    log.warning("the log grew while a seal was prepared; sealing again later")
                    return None
            self._insert(conn, cast(Table, LogEntry.__table__), entries)
            self._insert(conn, cast(Table, TreeNode.__table__), nodes)
            conn.execute(
                insert(Checkpoint).values(
                    tree_size=rng.size,
                    root_sha256=root.hex(),
                    key_id=self._signer.kid,
                    note=note,
                    created_at=utcnow(),
                )
            )
            ids = [e["entry_id"] for e in entries]
            for start in range(0, len(ids), 500):
                conn.execute(
                    delete(LogPending).where(LogPending.entry_id.in_(ids[start : start + 500]))
                )
            conn.commit()
        done = time.perf_counter()
        log.info(
            "sealed %d entries: tree size %d (%.0f ms; write lock held %.0f ms)",
            len(entries),
            rng.size,
            (done - started) * 1000,
            (done - locked) * 1000,
        )
        return Sealed(len(entries), rng.size, root)

    def _prepare(
        self, conn: Connection
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], merkle.CompactRange, str] | None:
        """The next batch: its log entries, the tree nodes they complete, the extended range
        and its signed checkpoint note; None if nothing is pending."""
        pending = conn.execute(
            select(LogPending.entry_id, LogPending.kind, LogPending.leaf_sha256)
            .order_by(LogPending.entry_id)
            .limit(self._batch)
        ).all()
        if not pending:
            return None
        size = tree_size(conn)
        rng = StoredTree(conn).border(size)
        entries, nodes = [], []
        for i, (entry_id, kind, leaf_hex) in enumerate(pending):
            entries.append(
                {"idx": size + i, "kind": kind, "entry_id": entry_id, "leaf_sha256": leaf_hex}
            )
            for level, index, h in rng.append(bytes.fromhex(leaf_hex)):
                nodes.append({"level": level, "idx": index, "hash": h})
        note = self._signer.sign_note(checkpoint_body(self._signer.origin, rng.size, rng.root()))
        return entries, nodes, rng, note

    def _insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Thousands of rows: on SQLite as multi-row statements (a statement per row hands the
        GIL back and forth with a busy event loop for each, under the write lock)."""
        if not rows:
            return
        if self._inserts is None:
            conn.execute(insert(table), rows)
        else:
            self._inserts.of(table).run_multirow(conn, rows)


async def seal_periodically(
    sealer: Sealer,
    interval_s: float,
    on_sealed: Callable[[list[Sealed]], None] | None = None,
) -> None:
    """The gateway's sealing loop: register the key, then seal every ``interval_s`` seconds.
    A failed run (store down, lock contention) is logged and retried on the next tick.
    ``on_sealed`` hears of every run that signed checkpoints (the sealer metrics)."""
    registered = False
    while True:
        try:
            if not registered:
                await _finish_in_thread(sealer.register_key)
                registered = True
            done = await _finish_in_thread(sealer.seal)
            if done and on_sealed is not None:
                on_sealed(done)
        except Exception as exc:  # the loop must outlive any one failure
            log.warning("sealing failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval_s)


async def _finish_in_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a worker thread; if cancelled meanwhile (shutdown), wait for the thread
    before re-raising, so the engine is not disposed under a connection still checked out."""
    work = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise
