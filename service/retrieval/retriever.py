"""Retrieval: the caller's tenant's best active chunks of a collection, resolved in SQL.

Qdrant finds candidate chunk ids; SQL supplies what the record keeps (document, version,
offsets, text hash) and whether each version was already superseded at this moment, so a
record never names a chunk that is not registered (an orphan point from an interrupted
ingestion is skipped). Blocking: the pipeline calls it from a worker thread.
"""

from __future__ import annotations

import uuid

from service.db.base import utcnow
from service.documents import repository
from service.documents.registry import Registry
from service.documents.sparse import query_vector
from service.retrieval.sources import Source


class Retriever:
    """Searches the registry's index."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def search(
        self, *, tenant_id: uuid.UUID, collection: str, query: str, top_k: int
    ) -> list[Source]:
        """Up to ``top_k`` sources numbered from 1, best first."""
        index = self._registry.indexes.get()
        embedder = self._registry.embedder
        dense = None
        if embedder is not None and query.strip() and index.has_dense(collection):
            dense = embedder.embed([query])[0]
        hits = index.search(collection, tenant_id, query_vector(query), dense, top_k)
        if not hits:
            return []
        with self._registry.sessions() as session:
            found = repository.chunks(session, tenant_id, [chunk_id for chunk_id, _ in hits])
        at = utcnow()
        sources: list[Source] = []
        for chunk_id, score in hits:
            ctx = found.get(chunk_id)
            if ctx is None or ctx.document.collection != collection:
                continue
            sources.append(Source.of_chunk(len(sources) + 1, ctx, at=at, score=score))
        return sources
