"""Evidence packs: the log and everything its leaves cover, copied into a new SQLite file
(with the document registry: the chunks a retrieval's ``chunk_sha256`` names are the text the
model was shown).

A pack has the store's own schema (made by the same migrations), so ``provenant verify --pack``
runs the very code that verifies a live database. Keys, tenants' key hashes and pending entries
are not copied; api key ids stay in the records (the leaves cover them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Table, create_engine, insert, select

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.integrity.models import Checkpoint, LogEntry, SigningKey, TreeNode
from service.lineage.models import AdminEvent, AuditRecord, PolicyDecision, Retrieval
from service.provenance.models import ModelSnapshot

_TABLES: list[Table] = [
    t.__table__  # type: ignore[misc]
    for t in (
        Document,
        DocumentVersion,
        DocumentSupersession,
        Chunk,
        ModelSnapshot,
        AuditRecord,
        Retrieval,
        PolicyDecision,
        AdminEvent,
        LogEntry,
        TreeNode,
        Checkpoint,
        SigningKey,
    )
]
_BATCH = 10_000


def export(
    database_url: str, out: Path, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Write the pack; returns rows copied per table."""
    url = f"sqlite:///{out}"
    upgrade(url)
    source = make_engine(database_url)
    # the pack holds records without their tenants' key rows: no foreign-key enforcement
    target = create_engine(url)
    counts: dict[str, int] = {}
    try:
        with source.connect() as src, target.begin() as dst:
            for table in _TABLES:
                n = 0
                result = src.execution_options(yield_per=_BATCH).execute(select(table))
                for part in result.mappings().partitions(_BATCH):
                    dst.execute(insert(table), [dict(r) for r in part])
                    n += len(part)
                    if progress is not None:
                        progress(table.name, n)
                counts[table.name] = n
    finally:
        source.dispose()
        target.dispose()
    return counts
