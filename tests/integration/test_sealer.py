"""The sealer on a large SQLite backlog: the tree it stores is the RFC 6962 tree of the entries
in id order, and answers keep committing while it prepares a seal (it takes SQLite's one write
lock only to write)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uuid_utils
from sqlalchemy import Engine, func, insert, select

from service.db.base import utcnow
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.integrity import merkle, signing
from service.integrity.log import Sealer, StoredTree, tree_size
from service.integrity.models import Checkpoint, LogPending

ORIGIN = "test.provenant/log"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, Engine, Sealer]]:
    path = tmp_path / "seal.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    signer = signing.Signer(signing.load_or_create(tmp_path / "k.pem", create=True), ORIGIN)
    sealer = Sealer(engine, signer)
    sealer.register_key()
    try:
        yield path, engine, sealer
    finally:
        engine.dispose()


def _pend(engine: Engine, count: int) -> list[bytes]:
    """``count`` pending entries (as the audit writer leaves them); their leaf hashes in id
    order."""
    rows = [
        {
            "entry_id": uuid.UUID(bytes=uuid_utils.uuid7().bytes),
            "kind": "record",
            "leaf_sha256": hashlib.sha256(os.urandom(16)).hexdigest(),
            "created_at": utcnow(),
        }
        for _ in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(LogPending), rows)
    rows.sort(key=lambda r: r["entry_id"])
    return [bytes.fromhex(r["leaf_sha256"]) for r in rows]


def test_a_large_backlog_is_sealed_into_the_tree_of_its_entries(
    store: tuple[Path, Engine, Sealer],
) -> None:
    _, engine, sealer = store
    first = _pend(engine, 3)
    assert [s.entries for s in sealer.seal()] == [3]
    # more rows than one multi-row INSERT may bind (32,700 parameters: ~8,000 log entries)
    rest = _pend(engine, 20_001)
    done = sealer.seal()
    assert [s.entries for s in done] == [20_001]
    leaves = first + rest
    assert done[0].tree_size == len(leaves)
    assert done[0].root == merkle.root(leaves)
    with engine.connect() as conn:
        assert tree_size(conn) == len(leaves)
        # the stored perfect-subtree nodes give the same root, and proofs read them
        assert StoredTree(conn).mth(0, len(leaves)) == merkle.root(leaves)
        assert StoredTree(conn).mth(0, 3) == merkle.root(first)
        assert conn.execute(select(func.count()).select_from(LogPending)).scalar() == 0
        heads = conn.execute(select(Checkpoint.tree_size, Checkpoint.root_sha256)).all()
    assert sorted(heads) == [(3, merkle.root(first).hex()), (len(leaves), done[0].root.hex())]


def test_answers_commit_while_a_large_seal_is_prepared(
    store: tuple[Path, Engine, Sealer],
) -> None:
    path, engine, sealer = store
    _pend(engine, 40_000)
    sealing = threading.Event()
    result: list[int] = []

    def seal() -> None:
        sealing.set()
        result.extend(s.entries for s in sealer.seal())
        sealing.clear()

    thread = threading.Thread(target=seal)
    committed = 0  # while the seal ran
    # an audit writer's transactions, on a connection that never waits for the write lock
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        thread.start()
        sealing.wait(5)
        while sealing.is_set():
            try:
                writer.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked: the seal is writing
                time.sleep(0.001)
                continue
            writer.execute(
                "INSERT INTO log_pending VALUES (?, 'record', ?, '2026-11-21 00:00:00.000000')",
                (uuid.uuid4().hex, "0" * 64),
            )
            writer.execute("COMMIT")
            if sealing.is_set():
                committed += 1
            time.sleep(0.001)
        thread.join(60)
    finally:
        writer.close()
    # one checkpoint: the 40,000, and any answer committed before the seal read the backlog
    assert len(result) == 1 and result[0] >= 40_000
    # before, the seal held the write lock from its first read to its commit: no answer could
    # commit while it read, hashed and signed 40,000 entries
    assert committed >= 5


def test_a_sealer_keeps_out_while_another_process_holds_the_lock_and_seals_after_it_dies(
    store: tuple[Path, Engine, Sealer], tmp_path: Path
) -> None:
    """Several gateway processes on one SQLite store: one seals at a time (the others' seal
    runs end at once, sealing nothing), and a holder that dies gives the lock up."""
    path, engine, sealer = store
    _pend(engine, 5)
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            f"{path}.sealer.lock",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            assert sealer.seal() == []
            with engine.connect() as conn:
                assert tree_size(conn) == 0
                assert conn.execute(select(func.count()).select_from(LogPending)).scalar() == 5
        finally:
            holder.kill()  # dies holding it: no release, the kernel drops the lock
            holder.wait(10)
    assert [s.entries for s in sealer.seal()] == [5]
    # and this process's sealer gives it up after each run: a second sealer can take it
    _pend(engine, 2)
    key = signing.load_or_create(tmp_path / "k.pem", create=False)
    assert [s.entries for s in Sealer(engine, signing.Signer(key, ORIGIN)).seal()] == [2]
