"""What the gateway keeps for the document registry: SQL sessions, the vector index, the
optional embedder and the ingestion limits (built in the lifespan, on ``app.state.registry``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.documents.embeddings import Embedder
from service.documents.index import IndexProvider
from service.documents.service import Limits


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
