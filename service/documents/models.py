"""The document registry: documents, their versions, which version superseded which, and the
chunks each version was cut into.

Everything here is evidence and append-only (PostgreSQL triggers reject UPDATE and DELETE): a
chunk's text is what a model was shown, so once written it never changes. Supersession is its
own append-only fact (``document_supersessions``) rather than a ``superseded_at`` column set once
on the version: every table stays strictly insert-only under the one generic trigger, the fact
carries its cause (``superseded_by``) and time, and "was version n current at time t" is one
``NOT EXISTS``. Chunk ids are also the Qdrant point ids of their vectors.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, PortableJSON, UTCDateTime


class Document(Base):
    """A source document of one tenant, identified within a collection by its source URI."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "collection", "source_uri", name="uq_documents_tenant_collection_uri"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    collection: Mapped[str] = mapped_column(String(64))
    source_uri: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DocumentVersion(Base):
    """One content of a document (content SHA-256 over the bytes ingested), numbered from 1."""

    __tablename__ = "document_versions"
    __table_args__ = (
        UniqueConstraint("document_id", "version", name="uq_document_versions_document_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("documents.id"))
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str | None] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)  # None for formats without pages
    chunk_count: Mapped[int] = mapped_column(Integer)
    doc_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", PortableJSON)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DocumentSupersession(Base):
    """Version ``version_id`` stopped being current when ``superseded_by`` was ingested."""

    __tablename__ = "document_supersessions"

    version_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("document_versions.id"), primary_key=True
    )
    superseded_by: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("document_versions.id"))
    superseded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Chunk(Base):
    """A passage of a version: its page (1-based; None when the format has no pages), its
    character offsets into that page's extracted text, the text itself and its SHA-256."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("version_id", "ordinal", name="uq_chunks_version_ordinal"),
        Index("ix_chunks_tenant_text_sha256", "tenant_id", "text_sha256"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # = its Qdrant point id
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    version_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("document_versions.id"))
    ordinal: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
