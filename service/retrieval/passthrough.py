"""Verifying the sources an external RAG app reports (route kind ``rag-passthrough``).

Each reported entry is resolved against the caller's tenant's registry, and is ``verified``
only on an exact match:

- a chunk id or Qdrant point id (the same UUID here) that names a registered chunk, and, when
  the entry also carries text (or its SHA-256) or a source URI, the text's SHA-256 equals the
  chunk's and the URI equals its document's;
- otherwise a source URI and a text (or its SHA-256) whose SHA-256 equals a chunk of that
  document (any version: a superseded one verifies, and is reported ``superseded``).

Anything else (an unknown id, altered text, a fabricated source) is kept as reported with
``verified: false``. What the app reported is stored with every entry.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

import orjson
import rfc8785
from sqlalchemy.orm import Session

from service.config import SourceFields
from service.db.base import utcnow
from service.documents import repository
from service.integrity.canonical import canonical
from service.retrieval.sources import Source

MAX_SOURCES = 64
_MAX_REPORTED = 16 * 1024


def at_path(value: Any, path: str) -> Any:
    """The value at a dotted path (``choices.0.message.context.sources``; ``$.`` and ``[n]``
    are accepted too), or None."""
    path = path.removeprefix("$").removeprefix(".").replace("[", ".").replace("]", "")
    for key in (k for k in path.split(".") if k):
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _as_reported(entry: Any) -> dict[str, Any]:
    """The entry as stored: itself if it is a small JSON object the integrity log can hash,
    else its size and SHA-256."""
    raw = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    if isinstance(entry, dict) and len(raw) <= _MAX_REPORTED:
        try:
            canonical(entry)
            return entry
        except rfc8785.CanonicalizationError:
            pass
    return {"unstored": True, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def _sha256_hex(value: Any) -> str | None:
    if isinstance(value, str) and len(value) == 64:
        lowered = value.lower()
        if all(c in "0123456789abcdef" for c in lowered):
            return lowered
    return None


def _text(entry: dict[str, Any], key: str, limit: int = 1000) -> str | None:
    value = entry.get(key)
    return value[:limit] if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _reference(
    entry: dict[str, Any], fields: SourceFields, chunk_id: uuid.UUID | None, uri: str | None
) -> str | None:
    """How the record names an unverified source: its id, else its URI."""
    if chunk_id is not None:
        return str(chunk_id)
    for key in (fields.chunk_id, fields.point_id):
        value = entry.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return uri


def resolve(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    reported: Any,
    fields: SourceFields,
    collection: str | None,
) -> list[Source]:
    """The reported sources (up to 64), numbered in the order reported, each verified or not."""
    if not isinstance(reported, list):
        return []
    entries = reported[:MAX_SOURCES]
    at = utcnow()
    ids = {
        i: _uuid(e.get(fields.chunk_id)) or _uuid(e.get(fields.point_id))
        for i, e in enumerate(entries)
        if isinstance(e, dict)
    }
    known = repository.chunks(session, tenant_id, [u for u in ids.values() if u is not None])
    out: list[Source] = []
    for i, entry in enumerate(entries):
        ref = i + 1
        if not isinstance(entry, dict):
            out.append(Source(ref=ref, verified=False, reported=_as_reported(entry)))
            continue
        text = entry.get(fields.text) if isinstance(entry.get(fields.text), str) else None
        uri = _text(entry, fields.source_uri)
        text_sha = (
            hashlib.sha256(text.encode("utf-8")).hexdigest()
            if text is not None
            else _sha256_hex(entry.get(fields.text_sha256))
        )
        chunk_id = ids.get(i)
        match: repository.ChunkContext | None = None
        if chunk_id is not None:
            ctx = known.get(chunk_id)
            if (
                ctx is not None
                and (collection is None or ctx.document.collection == collection)
                and (text_sha is None or text_sha == ctx.chunk.text_sha256)
                and (uri is None or uri == ctx.document.source_uri)
            ):
                match = ctx
        elif uri is not None and text_sha is not None:
            found = repository.chunks_by_text(
                session, tenant_id, text_sha, source_uri=uri, collection=collection
            )
            match = found[0] if found else None
        score = _number(entry.get(fields.score))
        if match is not None:
            source = Source.of_chunk(ref, match, at=at, score=score)
        else:
            page = entry.get(fields.page)
            source = Source(
                ref=ref,
                score=score,
                title=_text(entry, fields.title, 500),
                source_uri=uri,
                page=page if isinstance(page, int) and not isinstance(page, bool) else None,
                verified=False,
                source_ref=_reference(entry, fields, chunk_id, uri),
            )
        source.reported = _as_reported(entry)
        if source.source_ref is not None:
            source.source_ref = source.source_ref[:500]
        out.append(source)
    return out
