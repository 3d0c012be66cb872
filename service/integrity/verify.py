"""``provenant verify``: recompute every leaf from the stored rows, rebuild the tree, check every
checkpoint's signature and root, and name each entry that was altered, deleted, inserted or
reordered.

The tree is rebuilt from the log's stored leaf hashes and must reproduce every signed checkpoint
root (so the log only grew and no entry was swapped, dropped or slipped in); each stored leaf must
equal the leaf recomputed from its record or event and that record's lineage rows (so no row was
edited); every record must have a log entry (or still be pending within the maximum merge delay);
and inside one checkpoint's range entries must be in ascending id order, the order the sealer
writes them in (so a swap names its entries). The same code runs on a live database and on an
evidence pack, which is a SQLite database with the same tables.

On a file-backed SQLite store (the embedded default, evidence packs) the walk over the entries
runs natively (``leafscan``, a C extension) and every entry it does not confirm is checked here by
the same per-entry code, so the findings do not depend on which walk ran. PostgreSQL stores, and
installs built without a C compiler, take the Python walk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, select

from service.db.base import utcnow
from service.documents.models import Chunk
from service.integrity import leaf, leafscan, merkle
from service.integrity.canonical import digest
from service.integrity.log import tree_size
from service.integrity.models import Checkpoint, LogEntry, LogPending, SigningKey
from service.integrity.signing import b64url_decode, parse_checkpoint, verify_note
from service.lineage.models import AdminEvent, AuditRecord, PolicyDecision, Retrieval
from service.provenance.models import ModelSnapshot

_CHUNK = 20_000
_RECHECK_BATCH = 500  # log indexes per query when re-checking what the native scan left


@dataclass(frozen=True)
class Problem:
    """One finding: what is wrong, with which entry, where in the log."""

    kind: str  # altered | deleted | inserted | reordered | unsealed | checkpoint | signature
    detail: str
    entry_id: str | None = None
    index: int | None = None


@dataclass
class Report:
    """The outcome of one verification."""

    tree_size: int = 0
    entries: int = 0
    checkpoints: int = 0
    latest_checkpoint: int = 0
    unsigned_tail: int = 0
    pending: int = 0
    natively_confirmed: int = 0  # entries the native scan confirmed (leafscan); 0 in Python
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    engine: Engine,
    *,
    origin: str,
    publics: dict[str, bytes] | None = None,
    max_merge_delay_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
    native: bool = True,
) -> Report:
    """Verify the log in ``engine``'s database. ``publics`` (kid → raw Ed25519 key) are the
    keys to trust; by default the ``signing_keys`` table's (pass them explicitly to verify
    without trusting the database, e.g. from a JWKS fetched earlier). ``native``: walk an SQLite
    store with the C scan when it is built (``leafscan``); the result is the same either way."""
    report = Report()
    with engine.connect() as conn:
        if publics is None:
            publics = {
                kid: b64url_decode(pk)
                for kid, pk in conn.execute(select(SigningKey.kid, SigningKey.public_key))
            }
        signed = _checkpoints(conn, origin, list(publics.values()), report)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # the native walk lets go of the GIL: meanwhile a second connection looks for
            # unlogged records and altered chunks (a tenth of a million-record verify)
            others = None
            if native and leafscan.available() and leafscan.database_file(engine) is not None:
                others = pool.submit(_own_connection, engine, max_merge_delay_s)
            report.tree_size = _scan(conn, signed, report, progress, native)
            found = _others(conn, max_merge_delay_s) if others is None else others.result()
        report.pending = found.pending
        report.problems.extend(found.problems)
    report.latest_checkpoint = max(signed, default=0)
    report.unsigned_tail = report.tree_size - report.latest_checkpoint
    report.problems.sort(key=lambda p: (p.index is None, p.index or 0, p.kind))
    return report


def _others(conn: Connection, max_merge_delay_s: float) -> Report:
    """The checks outside the log's walk: unlogged records and events, altered chunks."""
    report = Report()
    _unlogged(conn, report, max_merge_delay_s)
    _chunks(conn, report)
    return report


def _own_connection(engine: Engine, max_merge_delay_s: float) -> Report:
    with engine.connect() as conn:
        return _others(conn, max_merge_delay_s)


def _checkpoints(
    conn: Connection, origin: str, publics: list[bytes], report: Report
) -> dict[int, bytes]:
    """Signed roots by tree size, from the checkpoints whose signatures verify."""
    signed: dict[int, bytes] = {}
    for cp in conn.execute(select(Checkpoint).order_by(Checkpoint.tree_size)).mappings():
        report.checkpoints += 1
        size_row, root_row = cp["tree_size"], cp["root_sha256"]
        body = verify_note(cp["note"], origin, publics)
        if body is None:
            report.problems.append(
                Problem("signature", f"checkpoint {size_row}: no valid signature by a trusted key")
            )
            continue
        try:
            cp_origin, size, root = parse_checkpoint(body)
        except ValueError as exc:
            report.problems.append(Problem("checkpoint", f"checkpoint {size_row}: {exc}"))
            continue
        if cp_origin != origin or size != size_row or root.hex() != root_row:
            report.problems.append(
                Problem("checkpoint", f"checkpoint {size_row}: its row disagrees with its note")
            )
        signed[size] = root
    return signed


def _grouped(rows: Iterator[Any]) -> Iterator[tuple[int, list[Any]]]:
    """(log index, rows) from rows ordered by log index (column 0)."""
    current: int | None = None
    group: list[Any] = []
    for row in rows:
        if row[0] != current:
            if current is not None:
                yield current, group
            current, group = row[0], []
        group.append(row._mapping)
    if current is not None:
        yield current, group


class _Lineage:
    """Lineage rows of the records whose log entries match ``where``, by log index."""

    def __init__(self, conn: Connection, *where: ColumnElement[bool]) -> None:
        self.retrievals = self._by_index(conn, Retrieval, where)
        self.decisions = self._by_index(conn, PolicyDecision, where)

    @staticmethod
    def _by_index(
        conn: Connection,
        table: type[Retrieval] | type[PolicyDecision],
        where: tuple[ColumnElement[bool], ...],
    ) -> dict[int, list[Any]]:
        rows = conn.execute(
            select(LogEntry.idx, table)
            .join(table, table.record_id == LogEntry.entry_id)
            .where(*where)
            .order_by(LogEntry.idx)
        )
        return dict(_grouped(iter(rows)))


def _entries(conn: Connection, *where: ColumnElement[bool]) -> Iterator[Any]:
    """Log entries matching ``where`` in index order, each with its record's or event's row."""
    rec_cols = [c for c in AuditRecord.__table__.c]
    ev_cols = [c.label(f"ev_{c.name}") for c in AdminEvent.__table__.c]
    return iter(
        conn.execute(
            select(
                LogEntry.idx,
                LogEntry.kind,
                LogEntry.entry_id,
                LogEntry.leaf_sha256,
                *rec_cols,
                *ev_cols,
            )
            .outerjoin(AuditRecord, AuditRecord.id == LogEntry.entry_id)
            .outerjoin(AdminEvent, AdminEvent.id == LogEntry.entry_id)
            .where(*where)
            .order_by(LogEntry.idx)
        )
    )


def _snapshots(conn: Connection, report: Report) -> dict[Any, str]:
    """Each model snapshot's recomputed hash; a snapshot edited since is reported."""
    out: dict[Any, str] = {}
    for snap in conn.execute(select(ModelSnapshot)).mappings():
        actual = digest(snap["content"])
        if actual != snap["snapshot_sha256"]:
            report.problems.append(
                Problem(
                    "altered",
                    f"model snapshot {snap['id']} ({snap['name']} v{snap['version']}) no longer "
                    "matches its hash; the records it served are named too",
                    str(snap["id"]),
                )
            )
        out[snap["id"]] = actual
    return out


def content_problem(row: Any) -> str | None:
    """Why a record's content disagrees with its salted hashes, if it does."""
    salt = row["content_salt"]
    content = (row["prompt"], row["answer"], leaf.choices_text(row["choices"]))
    stored = (
        row["prompt_salted_sha256"],
        row["answer_salted_sha256"],
        row["choices_salted_sha256"],
    )
    names = ("prompt", "answer", "choices")
    if salt is None:
        for name, value in zip(names, content, strict=True):
            if value is not None:
                return f"{name} present without a salt"
        return None
    for name, value, expected in zip(names, content, stored, strict=True):
        if value is not None and leaf.salted_sha256(salt, value) != expected:
            return f"{name} does not match its salted hash"
    for name, value, plain in (
        ("prompt", row["prompt"], row["prompt_sha256"]),
        ("answer", row["answer"], row["answer_sha256"]),
    ):
        if value is not None and hashlib.sha256(value.encode()).hexdigest() != plain:
            return f"{name} does not match {name}_sha256"
    return None


def _scan(
    conn: Connection,
    signed: dict[int, bytes],
    report: Report,
    progress: Callable[[int, int], None] | None,
    native: bool,
) -> int:
    """Walk the log in index order, natively where it can (``leafscan``); returns its size."""
    snapshots = _snapshots(conn, report)
    total = tree_size(conn)
    bounds = sorted(signed)
    found = None
    if native:
        found = leafscan.scan(
            conn.engine, total=total, bounds=bounds, snapshots=snapshots, progress=progress
        )
    if found is None:
        size, reached = _walk(conn, signed, bounds, snapshots, total, report, progress)
    else:
        size, reached = _native(conn, found, signed, snapshots, report)
    for bound in bounds[reached:]:
        report.problems.append(
            Problem("deleted", f"checkpoint {bound} signs more entries than the log holds ({size})")
        )
    return size


def _walk(
    conn: Connection,
    signed: dict[int, bytes],
    bounds: list[int],
    snapshots: dict[Any, str],
    total: int,
    report: Report,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """The Python walk: (tree size, checkpoints reached)."""
    rng = merkle.CompactRange()
    next_bound = 0
    range_start = 0
    last_id: Any = None
    expected = 0
    for lo in range(0, max(total, 1), _CHUNK):
        hi = lo + _CHUNK
        where = (LogEntry.idx >= lo, LogEntry.idx < hi)
        lineage = _Lineage(conn, *where)
        for row in _entries(conn, *where):
            idx, entry_id, stored = row[0], row[2], row[3]
            if idx != expected:
                report.problems.append(_gap(expected, idx))
                expected = idx
            expected += 1
            report.entries += 1
            problem = _check_entry(row, lineage, snapshots)
            if problem is not None:
                report.problems.append(problem)
            if last_id is not None and idx > range_start and entry_id.bytes <= last_id.bytes:
                report.problems.append(_reordered(idx, entry_id, last_id))
            last_id = entry_id
            rng.append(bytes.fromhex(stored))
            if next_bound < len(bounds) and rng.size == bounds[next_bound]:
                root = rng.root()
                if root != signed[rng.size]:
                    report.problems.append(_unreproduced(range_start, rng.size))
                range_start = rng.size
                last_id = None
                next_bound += 1
        if progress is not None:
            progress(min(hi, total), total)
    return rng.size, next_bound


def _native(
    conn: Connection,
    found: leafscan.Findings,
    signed: dict[int, bytes],
    snapshots: dict[Any, str],
    report: Report,
) -> tuple[int, int]:
    """The native scan's findings as problems, the entries it did not confirm checked here:
    (tree size, checkpoints reached)."""
    report.entries += found.size
    report.natively_confirmed = found.confirmed
    report.problems.extend(_gap(expected, idx) for expected, idx in found.gaps)
    for start in range(0, len(found.recheck), _RECHECK_BATCH):
        where = LogEntry.idx.in_(found.recheck[start : start + _RECHECK_BATCH])
        lineage = _Lineage(conn, where)
        for row in _entries(conn, where):
            problem = _check_entry(row, lineage, snapshots)
            if problem is not None:
                report.problems.append(problem)
    report.problems.extend(_reordered(*r) for r in found.reordered)
    for size, root, range_start in found.roots:
        if root != signed[size]:
            report.problems.append(_unreproduced(range_start, size))
    return found.size, len(found.roots)


def _gap(expected: int, idx: int) -> Problem:
    return Problem("deleted", f"log indexes {expected}..{idx - 1} are missing", index=expected)


def _reordered(idx: int, entry_id: Any, last_id: Any) -> Problem:
    return Problem(
        "reordered",
        f"entry {entry_id} at index {idx} is out of the sealer's order (after {last_id})",
        str(entry_id),
        idx,
    )


def _unreproduced(range_start: int, size: int) -> Problem:
    return Problem(
        "checkpoint",
        f"the log's entries {range_start}..{size - 1} do not reproduce the signed root of "
        f"checkpoint {size}",
        index=range_start,
    )


def _check_entry(row: Any, lineage: _Lineage, snapshots: dict[Any, str]) -> Problem | None:
    """The problem with one log entry's record or event, if any."""
    m, idx, kind, entry_id, stored = row._mapping, row[0], row[1], row[2], row[3]
    if kind == leaf.RECORD:
        problem = _check_record(m, lineage, snapshots, idx, stored)
    else:
        problem = _check_event(m, stored)
    return None if problem is None else Problem(problem[0], problem[1], str(entry_id), idx)


def _check_record(
    m: Any, lineage: _Lineage, snapshots: dict[Any, str], idx: int, stored: str
) -> tuple[str, str] | None:
    if m["id"] is None:
        return "deleted", "the log's record is missing from audit_records"
    content = content_problem(m)
    if content is not None:
        return "altered", content
    snapshot = m["model_snapshot_id"]
    doc = leaf.record_document(
        m,
        retrievals=lineage.retrievals.get(idx, ()),
        decisions=lineage.decisions.get(idx, ()),
        snapshot_sha256=None if snapshot is None else snapshots.get(snapshot, "missing"),
    )
    if leaf.leaf_sha256(doc) != stored:
        return "altered", "the record or its lineage rows no longer match its log entry"
    return None


def _check_event(m: Any, stored: str) -> tuple[str, str] | None:
    if m["ev_id"] is None:
        return "deleted", "the log's admin event is missing from admin_events"
    row = {c.name: m[f"ev_{c.name}"] for c in AdminEvent.__table__.c}
    if leaf.leaf_sha256(leaf.event_document(row)) != stored:
        return "altered", "the admin event no longer matches its log entry"
    return None


def _chunks(conn: Connection, report: Report) -> None:
    """The chunks records were given must still hold that text: each chunk's text matches its
    ``text_sha256``, and each retrieval's ``chunk_sha256`` (covered by the record's leaf) matches
    the chunk it names. A chunk a record names but the registry lost is reported deleted."""
    altered: set[Any] = set()
    rows = conn.execution_options(yield_per=_CHUNK).execute(
        select(Chunk.id, Chunk.text, Chunk.text_sha256)
    )
    for chunk_id, text, stored in rows:
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != stored:
            altered.add(chunk_id)
            report.problems.append(
                Problem("altered", f"chunk {chunk_id}'s text no longer matches its hash")
            )
    cited = conn.execution_options(yield_per=_CHUNK).execute(
        select(
            Retrieval.record_id,
            Retrieval.rank,
            Retrieval.chunk_id,
            Retrieval.chunk_sha256,
            Chunk.id,
            Chunk.text_sha256,
        )
        .outerjoin(Chunk, Chunk.id == Retrieval.chunk_id)
        .where(Retrieval.chunk_id.is_not(None))
    )
    for record_id, rank, named, seen, found, stored in cited:
        if found is None:
            problem = Problem(
                "deleted", f"chunk {named} (source {rank}) is missing", str(record_id)
            )
        elif named in altered or (seen is not None and seen != stored):
            problem = Problem(
                "altered",
                f"chunk {named} (source {rank}) no longer holds the text the answer was given",
                str(record_id),
            )
        else:
            continue
        report.problems.append(problem)


def _unlogged(conn: Connection, report: Report, max_merge_delay_s: float) -> None:
    """Records and events with no log entry: pending within the delay, else inserted."""
    pending = {
        entry_id: created
        for entry_id, created in conn.execute(select(LogPending.entry_id, LogPending.created_at))
    }
    report.pending = len(pending)
    late = utcnow() - timedelta(seconds=max_merge_delay_s)
    for table, what in ((AuditRecord, "record"), (AdminEvent, "admin event")):
        # NOT EXISTS: answered from the entry_id index alone (an outer join read each entry's
        # row too, a third of a million-record verify's time outside the leaves)
        logged = select(LogEntry.idx).where(LogEntry.entry_id == table.id).exists()
        orphans = conn.execute(select(table.id).where(~logged)).scalars()
        for entry_id in orphans:
            if entry_id not in pending:
                report.problems.append(
                    Problem(
                        "inserted",
                        f"{what} is in no log entry and was never pending",
                        str(entry_id),
                    )
                )
            elif pending[entry_id] < late:
                report.problems.append(
                    Problem(
                        "unsealed", f"{what} pending beyond the maximum merge delay", str(entry_id)
                    )
                )
