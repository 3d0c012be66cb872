"""Queries over the document registry, always within one tenant. Never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion


@dataclass(frozen=True)
class ChunkContext:
    """A chunk with its version, its document and (if any) the version's supersession."""

    chunk: Chunk
    version: DocumentVersion
    document: Document
    supersession: DocumentSupersession | None

    def superseded_at(self, moment: datetime | None = None) -> datetime | None:
        """When the version was superseded, if it was by ``moment`` (default: ever)."""
        s = self.supersession
        if s is None or (moment is not None and s.superseded_at > moment):
            return None
        return s.superseded_at


def _with_context() -> Select[Chunk, DocumentVersion, Document, DocumentSupersession]:
    return (
        select(Chunk, DocumentVersion, Document, DocumentSupersession)
        .join(DocumentVersion, DocumentVersion.id == Chunk.version_id)
        .join(Document, Document.id == DocumentVersion.document_id)
        .outerjoin(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
    )


def chunks(
    session: Session, tenant_id: uuid.UUID, chunk_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ChunkContext]:
    """The tenant's chunks among ``chunk_ids``, by id (others' chunks are simply absent)."""
    if not chunk_ids:
        return {}
    rows = session.execute(
        _with_context().where(Chunk.id.in_(list(chunk_ids)), Chunk.tenant_id == tenant_id)
    )
    return {c.id: ChunkContext(c, v, d, s) for c, v, d, s in rows}


def chunks_by_text(
    session: Session,
    tenant_id: uuid.UUID,
    text_sha256: str,
    *,
    source_uri: str | None = None,
    collection: str | None = None,
) -> list[ChunkContext]:
    """The tenant's chunks whose text has this SHA-256 (newest version first)."""
    stmt = _with_context().where(Chunk.tenant_id == tenant_id, Chunk.text_sha256 == text_sha256)
    if source_uri is not None:
        stmt = stmt.where(Document.source_uri == source_uri)
    if collection is not None:
        stmt = stmt.where(Document.collection == collection)
    rows = session.execute(stmt.order_by(DocumentVersion.ingested_at.desc()).limit(20))
    return [ChunkContext(c, v, d, s) for c, v, d, s in rows]


def chunk_ids(session: Session, version_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The ids of every chunk of these versions."""
    if not version_ids:
        return []
    return list(session.scalars(select(Chunk.id).where(Chunk.version_id.in_(list(version_ids)))))


def document_by_uri(
    session: Session, tenant_id: uuid.UUID, collection: str, source_uri: str
) -> Document | None:
    return session.scalars(
        select(Document).where(
            Document.tenant_id == tenant_id,
            Document.collection == collection,
            Document.source_uri == source_uri,
        )
    ).one_or_none()


def document(session: Session, tenant_id: uuid.UUID, document_id: uuid.UUID) -> Document | None:
    return session.scalars(
        select(Document).where(Document.id == document_id, Document.tenant_id == tenant_id)
    ).one_or_none()


def versions(
    session: Session, document_id: uuid.UUID
) -> list[tuple[DocumentVersion, DocumentSupersession | None]]:
    """Every version of a document, oldest first, with its supersession if any."""
    rows = session.execute(
        select(DocumentVersion, DocumentSupersession)
        .outerjoin(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
        .where(DocumentVersion.document_id == document_id)
        .order_by(DocumentVersion.version)
    )
    return [(v, s) for v, s in rows]


def latest_version(session: Session, document_id: uuid.UUID) -> DocumentVersion | None:
    return session.scalars(
        select(DocumentVersion)
        .where(DocumentVersion.document_id == document_id)
        .order_by(DocumentVersion.version.desc())
        .limit(1)
    ).first()


def page_of_documents(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    collection: str | None,
    limit: int,
    after: uuid.UUID | None,
) -> list[tuple[Document, DocumentVersion]]:
    """Documents (id order: UUIDv7, so creation order) with their latest version."""
    latest = (
        select(DocumentVersion.document_id, func.max(DocumentVersion.version).label("version"))
        .group_by(DocumentVersion.document_id)
        .subquery()
    )
    stmt = (
        select(Document, DocumentVersion)
        .join(latest, latest.c.document_id == Document.id)
        .join(
            DocumentVersion,
            (DocumentVersion.document_id == Document.id)
            & (DocumentVersion.version == latest.c.version),
        )
        .where(Document.tenant_id == tenant_id)
    )
    if collection is not None:
        stmt = stmt.where(Document.collection == collection)
    if after is not None:
        stmt = stmt.where(Document.id > after)
    return [(d, v) for d, v in session.execute(stmt.order_by(Document.id).limit(limit))]


def collections(session: Session) -> list[str]:
    """Every collection that holds a document, of any tenant."""
    return list(
        session.scalars(select(Document.collection).distinct().order_by(Document.collection))
    )


def versions_of_collection(
    session: Session, collection: str
) -> list[tuple[DocumentVersion, Document, bool]]:
    """Every version in a collection (all tenants) with its document and whether it is current."""
    rows = session.execute(
        select(DocumentVersion, Document, DocumentSupersession.version_id)
        .join(Document, Document.id == DocumentVersion.document_id)
        .outerjoin(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
        .where(Document.collection == collection)
        .order_by(DocumentVersion.ingested_at)
    )
    return [(v, d, superseded is None) for v, d, superseded in rows]


def version_chunks(session: Session, version_id: uuid.UUID) -> list[Chunk]:
    return list(
        session.scalars(select(Chunk).where(Chunk.version_id == version_id).order_by(Chunk.ordinal))
    )
