"""The vector index: one Qdrant collection per document collection, shared by tenants.

Each point is a chunk (point id = chunk id) with a sparse BM25 vector (``bm25``, IDF applied by
Qdrant), optionally a dense one (``dense``), and a payload ``tenant_id``, ``document_id``,
``version_id``, ``page`` and ``active``. Searches always filter on the caller's tenant and
``active = true``; superseded versions are deactivated, never deleted, so their chunks stay
resolvable in SQL. Points are written inactive and switched on only after the SQL transaction
that registers their chunks has committed (see ``documents.service``).

Local mode (``qdrant-client`` with a path under the data dir) admits one process: the gateway
holds it while it runs, and ``provenant ingest`` then goes through the gateway's API. Local mode
is not thread-safe, so calls are serialised with a lock; a server (``PROVENANT_QDRANT_URL``) is
called concurrently.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from service.config import Settings
from service.documents.sparse import Sparse
from service.errors import VectorStoreUnavailable

log = logging.getLogger("provenant.index")

SPARSE = "bm25"
DENSE = "dense"
_UPSERT_BATCH = 256
_STORE_ERRORS = (UnexpectedResponse, ResponseHandlingException, httpx.HTTPError, OSError)
T = TypeVar("T")


@dataclass(frozen=True)
class IndexPoint:
    """One chunk's vectors and payload."""

    chunk_id: uuid.UUID
    tenant_id: uuid.UUID
    document_id: uuid.UUID
    version_id: uuid.UUID
    page: int | None
    sparse: Sparse
    dense: list[float] | None = None


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _lock_is_free(lock: Path) -> bool:
    """Whether local mode's folder lock (the one qdrant-client takes) is free right now."""
    import portalocker

    if not lock.exists():
        return True
    with lock.open("r+") as f:
        try:
            portalocker.lock(
                f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.exceptions.LockException:
            return False
        portalocker.unlock(f)
        return True


class VectorIndex:
    """Qdrant, as the registry uses it."""

    def __init__(self, client: QdrantClient, *, prefix: str = "provenant_", local: bool) -> None:
        self._client = client
        self._prefix = prefix
        self._local = local
        self._lock = threading.Lock() if local else None
        self._known: dict[str, bool] = {}  # collection → has a dense vector

    @classmethod
    def open(cls, settings: Settings) -> VectorIndex:
        """Connect to the configured Qdrant; VectorStoreUnavailable if local mode is in use."""
        if settings.qdrant_url:
            key = settings.qdrant_api_key
            client = QdrantClient(
                url=settings.qdrant_url,
                api_key=key.get_secret_value() if key is not None else None,
                timeout=10,
                check_compatibility=False,  # no version probe on a background thread at start
            )
            return cls(client, prefix=settings.qdrant_prefix, local=False)
        path = settings.qdrant_location()
        path.mkdir(parents=True, exist_ok=True)
        busy = VectorStoreUnavailable(
            f"the local vector store at {path} is in use by another process "
            "(a running gateway?); set PROVENANT_QDRANT_URL to share a Qdrant server"
        )
        # qdrant-client loads every collection before it tries the folder's lock, and leaks the
        # lock file when that fails: look first
        if not _lock_is_free(path / ".lock"):
            raise busy
        try:
            client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        except RuntimeError as exc:  # "already accessed by another instance" (a race)
            raise busy from exc
        return cls(client, prefix=settings.qdrant_prefix, local=True)

    @property
    def local(self) -> bool:
        return self._local

    def close(self) -> None:
        """Release the client (and local mode's lock on its folder)."""
        with self._guard():
            self._client.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self._lock is not None:
            with self._lock:
                yield
        else:
            yield

    def _call(self, fn: Callable[[], T]) -> T:
        with self._guard():
            try:
                return fn()
            except _STORE_ERRORS as exc:
                raise VectorStoreUnavailable(
                    f"vector store unavailable: {type(exc).__name__}"
                ) from exc

    def qdrant_name(self, collection: str) -> str:
        """The Qdrant collection behind a document collection."""
        return f"{self._prefix}{collection}"

    def _dense_of(self, name: str) -> bool | None:
        """Whether the Qdrant collection has a dense vector; None if it does not exist."""
        if name in self._known:
            return self._known[name]
        if not self._client.collection_exists(name):
            return None
        vectors = self._client.get_collection(name).config.params.vectors
        self._known[name] = isinstance(vectors, dict) and DENSE in vectors
        return self._known[name]

    def prepare(self, collection: str, dense_size: int | None) -> bool:
        """Create the collection if needed; returns whether dense vectors can be stored in it."""
        name = self.qdrant_name(collection)

        def run() -> bool:
            dense = self._dense_of(name)
            if dense is not None:
                return dense
            try:
                self._create(name, dense_size)
            except UnexpectedResponse:  # another process created it meanwhile (a server)
                created = self._dense_of(name)
                if created is None:
                    raise
                return created
            self._known[name] = bool(dense_size)
            return bool(dense_size)

        return self._call(run)

    def _create(self, name: str, dense_size: int | None) -> None:
        self._client.create_collection(
            name,
            vectors_config=(
                {DENSE: models.VectorParams(size=dense_size, distance=models.Distance.COSINE)}
                if dense_size
                else {}
            ),
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        if not self._local:  # payload indexes exist only on a server
            self._client.create_payload_index(
                name,
                "tenant_id",
                models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            )
            self._client.create_payload_index(name, "active", models.PayloadSchemaType.BOOL)
            self._client.create_payload_index(name, "version_id", models.PayloadSchemaType.KEYWORD)

    def add(self, collection: str, points: Sequence[IndexPoint]) -> None:
        """Write points, inactive (``activate`` makes them searchable)."""
        name = self.qdrant_name(collection)
        structs = [
            models.PointStruct(
                id=str(p.chunk_id),
                vector={
                    SPARSE: models.SparseVector(indices=p.sparse.indices, values=p.sparse.values),
                    **({DENSE: p.dense} if p.dense is not None else {}),
                },
                payload={
                    "tenant_id": str(p.tenant_id),
                    "document_id": str(p.document_id),
                    "version_id": str(p.version_id),
                    "page": p.page,
                    "active": False,
                },
            )
            for p in points
        ]
        for i in range(0, len(structs), _UPSERT_BATCH):
            batch = structs[i : i + _UPSERT_BATCH]
            self._call(functools.partial(self._client.upsert, name, batch, wait=True))

    def set_active(self, collection: str, chunk_ids: Sequence[uuid.UUID], active: bool) -> None:
        """Switch these points on or off (by id: local mode would scan every point for a
        filter, and persists each point it touches)."""
        if not chunk_ids:
            return
        name = self.qdrant_name(collection)
        ids: list[models.ExtendedPointId] = [str(c) for c in chunk_ids]

        def run() -> None:
            if self._dense_of(name) is None:
                return
            for i in range(0, len(ids), 1000):
                self._client.set_payload(
                    name,
                    payload={"active": active},
                    points=models.PointIdsList(points=ids[i : i + 1000]),
                    wait=True,
                )

        self._call(run)

    def delete(self, collection: str, chunk_ids: Sequence[uuid.UUID]) -> None:
        """Remove points (compensation for a registration that did not commit)."""
        name = self.qdrant_name(collection)
        ids: list[models.ExtendedPointId] = [str(c) for c in chunk_ids]

        def run() -> None:
            if self._dense_of(name) is None:
                return
            for i in range(0, len(ids), 1000):
                self._client.delete(
                    name, points_selector=models.PointIdsList(points=ids[i : i + 1000]), wait=True
                )

        self._call(run)

    def active_versions(self, collection: str, tenant_id: uuid.UUID) -> dict[str, int]:
        """Active point counts by version id (for consistency checks and tests)."""
        name = self.qdrant_name(collection)

        def run() -> dict[str, int]:
            counts: dict[str, int] = {}
            if self._dense_of(name) is None:
                return counts
            flt = models.Filter(must=[_match("tenant_id", str(tenant_id)), _match("active", True)])
            offset: models.ExtendedPointId | None = None
            while True:
                points, offset = self._client.scroll(
                    name, scroll_filter=flt, limit=1000, offset=offset, with_payload=["version_id"]
                )
                for p in points:
                    version = str((p.payload or {}).get("version_id"))
                    counts[version] = counts.get(version, 0) + 1
                if offset is None:
                    return counts

        return self._call(run)

    def point_ids(self, collection: str) -> set[str]:
        """Every point id in the collection (for ``provenant reindex``'s orphan sweep)."""
        name = self.qdrant_name(collection)

        def run() -> set[str]:
            out: set[str] = set()
            if self._dense_of(name) is None:
                return out
            offset: models.ExtendedPointId | None = None
            while True:
                points, offset = self._client.scroll(
                    name, limit=1000, offset=offset, with_payload=False
                )
                out.update(str(p.id) for p in points)
                if offset is None:
                    return out

        return self._call(run)

    def count(self, collection: str, **payload: Any) -> int:
        """Points matching payload values exactly (any activity state unless given)."""
        name = self.qdrant_name(collection)

        def run() -> int:
            if self._dense_of(name) is None:
                return 0
            flt = models.Filter(must=[_match(k, v) for k, v in payload.items()])
            return self._client.count(name, count_filter=flt, exact=True).count

        return self._call(run)

    def has_dense(self, collection: str) -> bool:
        """Whether the collection exists with a dense vector."""
        return bool(self._call(lambda: self._dense_of(self.qdrant_name(collection))))

    def search(
        self,
        collection: str,
        tenant_id: uuid.UUID,
        sparse: Sparse,
        dense: list[float] | None,
        limit: int,
    ) -> list[tuple[uuid.UUID, float]]:
        """The tenant's best active chunks: sparse alone, or sparse and dense fused by RRF."""
        name = self.qdrant_name(collection)
        flt = models.Filter(must=[_match("tenant_id", str(tenant_id)), _match("active", True)])
        sparse_query = models.SparseVector(indices=sparse.indices, values=sparse.values)

        def run() -> list[tuple[uuid.UUID, float]]:
            has_dense = self._dense_of(name)
            if has_dense is None or (not sparse.indices and dense is None):
                return []
            if dense is not None and has_dense:
                prefetch = [
                    models.Prefetch(query=dense, using=DENSE, filter=flt, limit=limit * 4),
                ]
                if sparse.indices:
                    prefetch.append(
                        models.Prefetch(
                            query=sparse_query, using=SPARSE, filter=flt, limit=limit * 4
                        )
                    )
                result = self._client.query_points(
                    name,
                    prefetch=prefetch,
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=limit,
                    with_payload=False,
                )
            else:
                result = self._client.query_points(
                    name,
                    query=sparse_query,
                    using=SPARSE,
                    query_filter=flt,
                    limit=limit,
                    with_payload=False,
                )
            return [(uuid.UUID(str(p.id)), float(p.score)) for p in result.points]

        return self._call(run)
