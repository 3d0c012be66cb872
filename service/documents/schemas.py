"""API shapes of documents, versions and chunks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.documents.repository import ChunkContext


class VersionOut(BaseModel):
    """One version of a document."""

    id: uuid.UUID
    document_id: uuid.UUID
    version: int
    title: str
    content_sha256: str
    media_type: str
    filename: str | None
    size_bytes: int
    pages: int | None
    chunk_count: int
    metadata: dict[str, Any] | None
    ingested_at: datetime
    current: bool
    superseded_at: datetime | None
    superseded_by: uuid.UUID | None

    @classmethod
    def of(cls, v: DocumentVersion, s: DocumentSupersession | None) -> VersionOut:
        return cls(
            id=v.id,
            document_id=v.document_id,
            version=v.version,
            title=v.title,
            content_sha256=v.content_sha256,
            media_type=v.media_type,
            filename=v.filename,
            size_bytes=v.size_bytes,
            pages=v.pages,
            chunk_count=v.chunk_count,
            metadata=v.doc_metadata,
            ingested_at=v.ingested_at,
            current=s is None,
            superseded_at=s.superseded_at if s else None,
            superseded_by=s.superseded_by if s else None,
        )


class DocumentOut(BaseModel):
    """A document and its latest version."""

    id: uuid.UUID
    collection: str
    source_uri: str
    title: str
    created_at: datetime
    latest_version: VersionOut

    @classmethod
    def of(cls, d: Document, latest: DocumentVersion) -> DocumentOut:
        return cls(
            id=d.id,
            collection=d.collection,
            source_uri=d.source_uri,
            title=latest.title,
            created_at=d.created_at,
            latest_version=VersionOut.of(latest, None),
        )


class DocumentPage(BaseModel):
    """One page of documents; pass ``next_cursor`` back as ``cursor`` for the next."""

    object: Literal["list"] = "list"
    data: list[DocumentOut]
    has_more: bool
    next_cursor: uuid.UUID | None


class VersionList(BaseModel):
    object: Literal["list"] = "list"
    document_id: uuid.UUID
    data: list[VersionOut]


class IngestOut(BaseModel):
    """What an ingestion did: a new document, a new version, or nothing (same content)."""

    status: Literal["created", "new_version", "unchanged"]
    document: DocumentOut
    superseded_version: int | None = Field(
        default=None, description="the version this one superseded"
    )


class ChunkOut(BaseModel):
    """A chunk's text as it was ingested, and where it came from."""

    id: uuid.UUID
    document_id: uuid.UUID
    collection: str
    source_uri: str
    title: str
    version_id: uuid.UUID
    version: int
    content_sha256: str
    page: int | None
    char_start: int
    char_end: int
    text: str
    text_sha256: str
    current: bool
    superseded_at: datetime | None

    @classmethod
    def of(cls, ctx: ChunkContext) -> ChunkOut:
        c: Chunk = ctx.chunk
        return cls(
            id=c.id,
            document_id=ctx.document.id,
            collection=ctx.document.collection,
            source_uri=ctx.document.source_uri,
            title=ctx.version.title,
            version_id=ctx.version.id,
            version=ctx.version.version,
            content_sha256=ctx.version.content_sha256,
            page=c.page,
            char_start=c.char_start,
            char_end=c.char_end,
            text=c.text,
            text_sha256=c.text_sha256,
            current=ctx.supersession is None,
            superseded_at=ctx.superseded_at(),
        )
