"""The native scan behind ``provenant verify`` on SQLite stores (the embedded default and
evidence packs).

``_leafscan.c`` reads the log's entries with their records, admin events and lineage rows
straight from the database file (read-only, through libsqlite3), rebuilds each leaf as
``integrity.leaf`` describes it, checks the content hashes as ``verify.content_problem`` does,
and rebuilds the Merkle tree from the stored leaves. Python then re-checks, with the per-entry
code of ``verify``, exactly the entries the native scan did not confirm, so only Python ever names
a problem and the native path cannot be less strict than the Python one, only faster (a Python
loop over a million rows spends more on reading them through the sqlite3 driver than the whole
native scan takes).

It is used when the extension was built (``pip install`` compiles it when a C compiler and the
SQLite and OpenSSL headers are present; it is optional), the engine is a file-backed SQLite
database, and it is not turned off (``PROVENANT_VERIFY_NATIVE=0`` or ``verify --no-native``).
PostgreSQL stores always take the Python path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from service.integrity import leaf

try:
    from service.integrity import _leafscan
except ImportError:  # built without a C compiler: the Python verifier does everything
    _leafscan = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Findings:
    """What the native scan saw; ``verify`` turns it into problems."""

    size: int  # entries read: the tree size
    confirmed: int  # entries whose leaf and content the native scan confirmed
    gaps: list[tuple[int, int]]  # (expected index, index found instead)
    roots: list[tuple[int, bytes, int]]  # (checkpoint size, rebuilt root, range start)
    reordered: list[tuple[int, uuid.UUID, uuid.UUID]]  # (index, entry id, the id before it)
    recheck: list[int]  # indexes of entries for the Python checks


def available() -> bool:
    """True if the extension is importable and builds the leaves ``integrity.leaf`` builds."""
    return _leafscan is not None and _leafscan.LEAF_VERSION == leaf.LEAF_VERSION


def database_file(engine: Engine) -> Path | None:
    """The file of a file-backed SQLite engine (None for PostgreSQL, in-memory or URI forms)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.query or url.database in (None, "", ":memory:"):
        return None
    path = Path(str(url.database))
    return path if path.is_file() else None


def _threads() -> int:
    """Checker threads: one per CPU this process may run on, at most four (each holds its own
    connection and buffers; only two-CPU machines were measured)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def scan(
    engine: Engine,
    *,
    total: int,
    bounds: Sequence[int],
    snapshots: dict[uuid.UUID, str],
    progress: Callable[[int, int], None] | None,
) -> Findings | None:
    """Walk log indexes [0, total) natively; None when the native scan cannot run here (then
    the caller runs the Python one). ``bounds`` are the signed checkpoint sizes, ascending;
    ``snapshots`` each model snapshot's recomputed hash."""
    path = database_file(engine)
    if path is None or _leafscan is None or not available():
        return None
    hashes = {snapshot_id.hex: sha for snapshot_id, sha in snapshots.items()}
    try:
        size, confirmed, gaps, roots, reordered, recheck = _leafscan.scan(
            str(path), total, list(bounds), hashes, progress, _threads()
        )
    except _leafscan.Unsupported:
        return None
    return Findings(
        size=size,
        confirmed=confirmed,
        gaps=gaps,
        roots=roots,
        reordered=[(i, uuid.UUID(bytes=a), uuid.UUID(bytes=b)) for i, a, b in reordered],
        recheck=recheck,
    )
