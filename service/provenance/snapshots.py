"""Model snapshots: a registry's answer sealed by its hash, stored once, never changed.

A snapshot's identity is the SHA-256 of the RFC 8785 canonical JSON of its content
(``integrity.canonical.digest``, the same hash ``provenant verify`` recomputes). Storing is
insert-once: the row is inserted unless one with that hash exists (``ON CONFLICT DO NOTHING``, so
gateway replicas resolving the same version at once agree on one row), then read back. The row
is committed before any audit record can reference it; nothing ever updates it (on PostgreSQL
the append-only triggers refuse to).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from service.db.base import utcnow
from service.integrity.canonical import digest
from service.provenance.models import ModelSnapshot

_TABLE: Any = ModelSnapshot.__table__


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot row as the gateway uses it."""

    id: uuid.UUID
    sha256: str
    content: dict[str, Any]
    resolved_at: datetime

    def view(self) -> dict[str, Any]:
        """The registry fields of ``provenance.model`` (and of a record's ``model``)."""
        return model_view(self.id, self.sha256, self.content)


def model_view(snapshot_id: uuid.UUID, sha256: str, content: dict[str, Any]) -> dict[str, Any]:
    """What an answer's reader needs from a snapshot: which model, version, run, data."""
    return {
        "registry": content.get("registry"),
        "tracking_uri": content.get("tracking_uri"),
        "name": content.get("name"),
        "version": content.get("version"),
        "alias": content.get("alias"),
        "run_id": content.get("run_id"),
        "source": content.get("source"),
        "base_model": content.get("base_model"),
        "adapter": content.get("adapter"),
        "adapter_digest": content.get("adapter_digest"),
        "validation_status": content.get("validation_status"),
        "datasets": [
            {"name": d.get("name"), "digest": d.get("digest"), "source": d.get("source")}
            for d in content.get("datasets") or []
        ],
        "snapshot_id": str(snapshot_id),
        "snapshot_sha256": sha256,
    }


def _insert_once(dialect: str, row: dict[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (snapshot_sha256) DO NOTHING, in the store's dialect."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(_TABLE).values(row)
    return stmt.on_conflict_do_nothing(index_elements=["snapshot_sha256"])


def store(engine: Engine, content: dict[str, Any]) -> StoredSnapshot:
    """The snapshot row for this content: inserted if new, the existing one otherwise."""
    sha = digest(content)
    row = {
        "id": uuid.uuid4(),
        "snapshot_sha256": sha,
        "registry_uri": _clip(content.get("tracking_uri"), 500),
        "name": _clip(content.get("name"), 200) or "",
        "version": _clip(content.get("version"), 64),
        "alias": _clip(content.get("alias"), 200),
        "run_id": _clip(content.get("run_id"), 64),
        "content": content,
        "resolved_at": utcnow(),
    }
    with engine.begin() as conn:
        conn.execute(_insert_once(conn.dialect.name, row))
        found = conn.execute(
            select(_TABLE.c.id, _TABLE.c.content, _TABLE.c.resolved_at).where(
                _TABLE.c.snapshot_sha256 == sha
            )
        ).one()
    return StoredSnapshot(found.id, sha, found.content, found.resolved_at)


def _clip(value: Any, size: int) -> str | None:
    return None if value is None else str(value)[:size]
