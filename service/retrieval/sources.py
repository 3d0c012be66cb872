"""A source an answer was given: what the record keeps (a retrievals row) and what the client
sees (an entry of ``provenance.sources``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.documents.repository import ChunkContext


@dataclass
class Source:
    """One numbered source (``ref`` is the n of ``[n]``), resolved to a registered chunk or not."""

    ref: int
    score: float | None = None
    chunk_id: uuid.UUID | None = None
    document_id: uuid.UUID | None = None
    version_id: uuid.UUID | None = None
    collection: str | None = None
    title: str | None = None
    source_uri: str | None = None
    version: int | None = None
    content_sha256: str | None = None
    page: int | None = None
    char_start: int | None = None
    char_end: int | None = None
    text: str | None = None
    text_sha256: str | None = None
    superseded: bool | None = None  # at answer time; None when unresolved
    cited: bool = False
    verified: bool | None = None
    source_ref: str | None = None
    reported: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def of_chunk(
        cls, ref: int, ctx: ChunkContext, *, at: datetime, score: float | None = None
    ) -> Source:
        """A registered chunk as it stood at ``at`` (superseded then, or current)."""
        c, v, d = ctx.chunk, ctx.version, ctx.document
        return cls(
            ref=ref,
            score=score,
            chunk_id=c.id,
            document_id=d.id,
            version_id=v.id,
            collection=d.collection,
            title=v.title,
            source_uri=d.source_uri,
            version=v.version,
            content_sha256=v.content_sha256,
            page=c.page,
            char_start=c.char_start,
            char_end=c.char_end,
            text=c.text,
            text_sha256=c.text_sha256,
            superseded=ctx.superseded_at(at) is not None,
            verified=True,
            source_ref=f"{d.collection}/{d.source_uri}#v{v.version}"[:500],
        )

    def retrieval_row(self) -> dict[str, Any]:
        """The ``retrievals`` row (without ``record_id``): what the audit record keeps."""
        return {
            "rank": self.ref,
            "chunk_id": self.chunk_id,
            "source_ref": self.source_ref,
            # -0.0 as 0.0: SQLite keeps an integral REAL as an integer, so a stored -0.0 reads
            # back as 0.0 and its record's leaf (which spells "-0.0") would no longer verify
            "score": None if self.score is None else self.score + 0.0,
            "cited": self.cited,
            "verified": self.verified,
            "document_version_id": self.version_id,
            "chunk_sha256": self.text_sha256,
            "superseded": self.superseded,
            "reported": self.reported,
        }

    def api(self) -> dict[str, Any]:
        """The entry of ``provenance.sources``."""
        return {
            "ref": self.ref,
            "document_id": None if self.document_id is None else str(self.document_id),
            "title": self.title,
            "source_uri": self.source_uri,
            "version": self.version,
            "content_sha256": self.content_sha256,
            "page": self.page,
            "chunk_id": None if self.chunk_id is None else str(self.chunk_id),
            "char_start": self.char_start,
            "char_end": self.char_end,
            "score": self.score,
            "cited": self.cited,
            "verified": self.verified,
            "superseded": self.superseded,
        }


def mark_cited(sources: list[Source], refs: set[int]) -> None:
    """Set ``cited`` on the sources whose numbers the answer cites."""
    for s in sources:
        s.cited = s.ref in refs
