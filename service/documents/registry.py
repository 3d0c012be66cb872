"""What the gateway keeps for the document registry: SQL sessions, the vector index, the
optional embedder and the ingestion limits (built in the lifespan, on ``app.state.registry``)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.documents.embeddings import Embedder
from service.documents.service import Limits
from service.errors import VectorStoreUnavailable

if TYPE_CHECKING:
    from service.documents.index import VectorIndex

log = logging.getLogger("provenant.index")


class IndexProvider:
    """The gateway's index, opened at start or, if local mode's folder is busy then (a direct
    ``provenant ingest`` running), on first use; failed opens are retried at most once a
    second, and callers get VectorStoreUnavailable meanwhile."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._index: VectorIndex | None = None
        self._lock = threading.Lock()
        self._next_try = 0.0
        self._error: VectorStoreUnavailable | None = None

    def get(self) -> VectorIndex:
        """The open index (blocking: call from a worker thread)."""
        if self._index is not None:
            return self._index
        with self._lock:
            if self._index is None:
                if time.monotonic() < self._next_try and self._error is not None:
                    raise self._error
                # qdrant-client is imported here, on first use, not when the gateway starts:
                # it costs ~55 MiB and ~3 s that a worker serving only ``openai`` routes never
                # needs (bench/RESULTS.md, soak)
                from service.documents.index import VectorIndex

                try:
                    self._index = VectorIndex.open(self._settings)
                except VectorStoreUnavailable as exc:
                    self._error, self._next_try = exc, time.monotonic() + 1.0
                    raise
            return self._index

    def try_open(self) -> None:
        """Open now if possible; log (not raise) when local mode's folder is busy."""
        try:
            self.get()
        except VectorStoreUnavailable as exc:
            log.warning("%s; retrying on first use", exc.message)

    def close(self) -> None:
        """Close the index if it was opened."""
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None


@dataclass
class Registry:
    sessions: sessionmaker[Session]
    indexes: IndexProvider
    embedder: Embedder | None
    limits: Limits

    @classmethod
    def build(
        cls, settings: Settings, sessions: sessionmaker[Session], *, open_now: bool = True
    ) -> Registry:
        """The registry for these settings; the index opens now (``open_now``) if it can, else
        on first use (a gateway with no sourced route opens it only if documents are used)."""
        registry = cls(
            sessions, IndexProvider(settings), Embedder.from_settings(settings), Limits.of(settings)
        )
        if open_now:
            registry.indexes.try_open()
        return registry

    def close(self) -> None:
        """Release the index and the embedder's connections."""
        self.indexes.close()
        if self.embedder is not None:
            self.embedder.close()
