"""Use cases of the document registry: ingest a file (new document, new version, or nothing),
list documents and versions, read a chunk. Reads take the caller's session; ``ingest`` owns its
transaction, because it spans two stores.

Ingestion keeps SQL and Qdrant consistent without a distributed transaction:

1. everything that can fail on bad input (type, size, extraction, chunking, embeddings) runs
   before anything is written;
2. the points are written to Qdrant **inactive** (no search sees them);
3. one SQL transaction registers the document, version, chunks, the supersession of the
   previous version and an admin event (the knowledge-base change enters the integrity log);
   if it fails, the points are deleted again (compensation) and the error is raised;
4. after the commit the new version's points are switched on and the old version's off.

A crash between 2 and 3 leaves inactive points no search returns; a crash between 3 and 4
leaves the previous version searchable, which records then report as superseded. Re-ingesting
the same content finishes step 4 (it is otherwise a no-op); ``provenant reindex`` rebuilds a
whole collection's points from SQL and sweeps points SQL does not know.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import uuid_utils
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import COLLECTION_PATTERN, Settings
from service.db.base import utcnow
from service.documents import repository
from service.documents.chunking import chunk_pages
from service.documents.embeddings import Embedder
from service.documents.extract import extract, media_type_for
from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.documents.schemas import (
    ChunkOut,
    DocumentOut,
    DocumentPage,
    IngestOut,
    VersionList,
    VersionOut,
)
from service.documents.sparse import passage_vector
from service.errors import (
    Conflict,
    EmptyDocument,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
)
from service.lineage.events import record_event

if TYPE_CHECKING:  # qdrant-client loads with the index, on first use
    from service.documents.index import VectorIndex

log = logging.getLogger("provenant.documents")
_COLLECTION = re.compile(COLLECTION_PATTERN)
_MAX_METADATA = 16 * 1024


@dataclass(frozen=True)
class Upload:
    """One file (or text) to ingest and what the caller says about it."""

    collection: str
    source_uri: str
    data: bytes
    filename: str | None = None
    media_type: str | None = None
    title: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds on what one ingestion may take."""

    max_bytes: int
    max_pages: int
    chunk_chars: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_document_bytes, settings.max_document_pages, settings.chunk_chars)


def new_id() -> uuid.UUID:
    """A UUIDv7 (time-ordered)."""
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_upload(upload: Upload, limits: Limits) -> None:
    """Refuse what no ingestion could accept, naming the field."""
    if not _COLLECTION.match(upload.collection):
        raise InvalidRequest(
            "'collection' must be 1-64 characters: lower-case letters, digits, '_' or '-'",
            param="collection",
        )
    if not upload.source_uri or len(upload.source_uri) > 1000:
        raise InvalidRequest("'source_uri' must be 1-1000 characters", param="source_uri")
    if upload.title is not None and len(upload.title) > 500:
        raise InvalidRequest("'title' must be at most 500 characters", param="title")
    if upload.metadata is not None and len(orjson.dumps(upload.metadata)) > _MAX_METADATA:
        raise InvalidRequest(f"'metadata' must be at most {_MAX_METADATA} bytes", param="metadata")
    if len(upload.data) > limits.max_bytes:
        raise PayloadTooLarge(f"the document exceeds {limits.max_bytes} bytes")


def ingest(
    sessions: sessionmaker[Session],
    index: VectorIndex,
    embedder: Embedder | None,
    *,
    tenant_id: uuid.UUID,
    upload: Upload,
    limits: Limits,
    actor: str,
) -> IngestOut:
    """Register ``upload`` as a new document, a new version of it, or nothing if unchanged."""
    from service.documents.index import IndexPoint  # loaded with ``index`` already

    check_upload(upload, limits)
    media_type = media_type_for(upload.filename, upload.media_type)
    content_sha256 = sha256_hex(upload.data)
    with sessions() as session:
        doc = repository.document_by_uri(session, tenant_id, upload.collection, upload.source_uri)
        previous = repository.latest_version(session, doc.id) if doc is not None else None
        previous_ids = repository.chunk_ids(session, [previous.id]) if previous else []
        unchanged = previous is not None and previous.content_sha256 == content_sha256
        if doc is not None and unchanged:
            superseded = [v.id for v, s in repository.versions(session, doc.id) if s is not None]
            superseded_ids = repository.chunk_ids(session, superseded)
    if doc is not None and previous is not None and unchanged:
        _settle_index(index, upload.collection, previous_ids, superseded_ids)
        return IngestOut(status="unchanged", document=DocumentOut.of(doc, previous))

    extracted = extract(upload.data, media_type, max_pages=limits.max_pages)
    passages = chunk_pages(
        extracted.pages, paginated=extracted.paginated, max_chars=limits.chunk_chars
    )
    if not passages:
        raise EmptyDocument("no text could be extracted from the document")
    dense = embedder.embed([p.text for p in passages]) if embedder is not None else None
    has_dense = index.prepare(upload.collection, len(dense[0]) if dense else None)

    now = utcnow()
    document_id = doc.id if doc is not None else new_id()
    version = DocumentVersion(
        id=new_id(),
        document_id=document_id,
        version=previous.version + 1 if previous is not None else 1,
        title=_title(upload, extracted.title),
        content_sha256=content_sha256,
        media_type=media_type,
        filename=upload.filename[:500] if upload.filename else None,
        size_bytes=len(upload.data),
        pages=len(extracted.pages) if extracted.paginated else None,
        chunk_count=len(passages),
        doc_metadata=upload.metadata,
        ingested_at=now,
    )
    chunks = [
        Chunk(
            id=new_id(),
            tenant_id=tenant_id,
            version_id=version.id,
            ordinal=i,
            page=p.page,
            char_start=p.start,
            char_end=p.end,
            text=p.text,
            text_sha256=sha256_hex(p.text.encode("utf-8")),
        )
        for i, p in enumerate(passages)
    ]
    points = [
        IndexPoint(
            chunk_id=c.id,
            tenant_id=tenant_id,
            document_id=document_id,
            version_id=version.id,
            page=c.page,
            sparse=passage_vector(c.text),
            dense=dense[i] if dense is not None and has_dense else None,
        )
        for i, c in enumerate(chunks)
    ]
    index.add(upload.collection, points)  # inactive until the registration commits
    try:
        with sessions() as session, session.begin():
            if doc is None:
                doc = Document(
                    id=document_id,
                    tenant_id=tenant_id,
                    collection=upload.collection,
                    source_uri=upload.source_uri,
                    created_at=now,
                )
                session.add(doc)
                session.flush()
            session.add(version)
            session.flush()
            session.add_all(chunks)
            if previous is not None:
                session.add(
                    DocumentSupersession(
                        version_id=previous.id, superseded_by=version.id, superseded_at=now
                    )
                )
            record_event(
                session,
                actor=actor,
                action="document.ingested",
                tenant_id=tenant_id,
                target=f"{upload.collection}/{upload.source_uri}",
                detail={
                    "document_id": str(document_id),
                    "version_id": str(version.id),
                    "version": version.version,
                    "content_sha256": content_sha256,
                    "chunks": len(chunks),
                    "chunks_sha256": sha256_hex("".join(c.text_sha256 for c in chunks).encode()),
                    "supersedes": previous.version if previous is not None else None,
                },
            )
    except BaseException as exc:
        _compensate(index, upload.collection, [c.id for c in chunks])
        if isinstance(exc, IntegrityError) and _raced(sessions, tenant_id, upload, previous):
            raise Conflict(
                f"{upload.source_uri!r} was changed by another ingestion at the same time; retry"
            ) from exc
        if isinstance(exc, DataError):  # a value the store cannot hold (e.g. NUL in the text)
            raise InvalidRequest("a value in the document cannot be stored") from exc
        if isinstance(exc, SQLAlchemyError):
            log.error("document registration failed: %s", type(exc).__name__)
            raise StoreUnavailable(
                "the document could not be registered in the lineage store; nothing was ingested"
            ) from exc
        raise
    _settle_index(index, upload.collection, [c.id for c in chunks], previous_ids)
    return IngestOut(
        status="new_version" if previous is not None else "created",
        document=DocumentOut.of(doc, version),
        superseded_version=previous.version if previous is not None else None,
    )


def reindex(
    sessions: sessionmaker[Session],
    index: VectorIndex,
    embedder: Embedder | None,
    *,
    collection: str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Rebuild a collection's points from SQL (every tenant): the text is in SQL, so a lost or
    new vector store (local mode to a server, say) is filled again. Points get the same ids;
    current versions end active, superseded ones inactive, and points whose chunk SQL does not
    know (left by an interrupted ingestion) are deleted."""
    from service.documents.index import IndexPoint  # loaded with ``index`` already

    with sessions() as session:
        versions = repository.versions_of_collection(session, collection)
    known: set[str] = set()
    counts = {"versions": len(versions), "chunks": 0, "active": 0, "orphans_deleted": 0}
    for done, (version, doc, current) in enumerate(versions, start=1):
        with sessions() as session:
            chunks = repository.version_chunks(session, version.id)
        dense = embedder.embed([c.text for c in chunks]) if embedder is not None else None
        has_dense = index.prepare(collection, len(dense[0]) if dense else None)
        index.add(
            collection,
            [
                IndexPoint(
                    chunk_id=c.id,
                    tenant_id=c.tenant_id,
                    document_id=doc.id,
                    version_id=version.id,
                    page=c.page,
                    sparse=passage_vector(c.text),
                    dense=dense[i] if dense is not None and has_dense else None,
                )
                for i, c in enumerate(chunks)
            ],
        )
        if current:
            index.set_active(collection, [c.id for c in chunks], True)
            counts["active"] += len(chunks)
        known.update(str(c.id) for c in chunks)
        counts["chunks"] += len(chunks)
        if progress is not None:
            progress(done, len(versions))
    orphans = [uuid.UUID(p) for p in index.point_ids(collection) - known]
    index.delete(collection, orphans)
    counts["orphans_deleted"] = len(orphans)
    return counts


def _raced(
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    upload: Upload,
    previous: DocumentVersion | None,
) -> bool:
    """Whether another ingestion registered this document (or a version of it) meanwhile."""
    try:
        with sessions() as session:
            doc = repository.document_by_uri(
                session, tenant_id, upload.collection, upload.source_uri
            )
            latest = repository.latest_version(session, doc.id) if doc is not None else None
    except SQLAlchemyError:
        return False
    return (latest.id if latest else None) != (previous.id if previous else None)


def _title(upload: Upload, extracted: str | None) -> str:
    if upload.title:
        return upload.title
    if extracted:
        return extracted
    if upload.filename:
        return upload.filename.rsplit("/", 1)[-1][:500]
    return upload.source_uri[:500]


def _settle_index(
    index: VectorIndex, collection: str, current: list[uuid.UUID], old: list[uuid.UUID]
) -> None:
    """Make the current version's points searchable and older versions' not."""
    index.set_active(collection, current, True)
    index.set_active(collection, old, False)


def _compensate(index: VectorIndex, collection: str, chunk_ids: list[uuid.UUID]) -> None:
    try:
        index.delete(collection, chunk_ids)
    except Exception:  # the original error matters more; leftovers are inactive
        log.exception(
            "could not remove %d inactive points after a failed ingestion", len(chunk_ids)
        )


def list_documents(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    collection: str | None,
    limit: int,
    cursor: uuid.UUID | None,
) -> DocumentPage:
    """A page of the tenant's documents with their latest versions."""
    rows = repository.page_of_documents(
        session, tenant_id, collection=collection, limit=limit + 1, after=cursor
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return DocumentPage(
        data=[DocumentOut.of(d, v) for d, v in rows],
        has_more=has_more,
        next_cursor=rows[-1][0].id if has_more else None,
    )


def document_versions(
    session: Session, *, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> VersionList:
    """Every version of one of the tenant's documents, oldest first."""
    doc = repository.document(session, tenant_id, document_id)
    if doc is None:
        raise NotFound(f"no document {document_id}")
    return VersionList(
        document_id=doc.id,
        data=[VersionOut.of(v, s) for v, s in repository.versions(session, doc.id)],
    )


def read_chunk(session: Session, *, tenant_id: uuid.UUID, chunk_id: uuid.UUID) -> ChunkOut:
    """One of the tenant's chunks, with its text as it was ingested."""
    found = repository.chunks(session, tenant_id, [chunk_id]).get(chunk_id)
    if found is None:
        raise NotFound(f"no chunk {chunk_id}")
    return ChunkOut.of(found)
