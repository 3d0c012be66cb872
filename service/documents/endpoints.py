"""Document registry endpoints: ingest (multipart file or JSON text), list, versions, chunks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from service.config import COLLECTION_PATTERN
from service.deps import SessionDep
from service.documents import service
from service.documents.registry import Registry
from service.documents.schemas import ChunkOut, DocumentPage, IngestOut, VersionList
from service.documents.service import Upload
from service.errors import ClientClosedRequest, InvalidRequest, PayloadTooLarge
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["documents"])
_FORM_OVERHEAD = 256 * 1024  # multipart boundaries and the other fields

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "collection"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "collection": {"type": "string", "pattern": COLLECTION_PATTERN},
                        "source_uri": {"type": "string", "description": "default: file name"},
                        "title": {"type": "string"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["collection", "source_uri", "text"],
                    "properties": {
                        "collection": {"type": "string", "pattern": COLLECTION_PATTERN},
                        "source_uri": {"type": "string"},
                        "text": {"type": "string"},
                        "media_type": {
                            "type": "string",
                            "enum": ["text/plain", "text/markdown", "text/html"],
                        },
                        "title": {"type": "string"},
                        "metadata": {"type": "object"},
                    },
                }
            },
        },
    }
}


async def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(_registry)]


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the upload exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the upload exceeds {limit} bytes")
            parts.append(chunk)
    except ClientDisconnect as exc:
        raise ClientClosedRequest("client disconnected while uploading") from exc
    return b"".join(parts)


def _str(value: Any, name: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    return value


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest("'metadata' must be a JSON object", param="metadata") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("'metadata' must be a JSON object", param="metadata")
    return value


async def _parse_upload(headers: Headers, raw: bytes) -> Upload:
    content_type = headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):

        async def stream() -> AsyncGenerator[bytes, None]:
            yield raw

        try:
            form = await MultiPartParser(headers, stream(), max_files=1, max_fields=20).parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidRequest("a 'file' part is required", param="file")
            data = await file.read()
            filename = file.filename or None
            return Upload(
                collection=_str(form.get("collection"), "collection", required=True) or "",
                source_uri=_str(form.get("source_uri"), "source_uri") or filename or "",
                data=data,
                filename=filename,
                media_type=file.content_type,
                title=_str(form.get("title"), "title"),
                metadata=_metadata(form.get("metadata")),
            )
        finally:
            await form.close()
    if not content_type.startswith("application/json"):
        raise InvalidRequest("send multipart/form-data (a file) or application/json (text)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    text = _str(body.get("text"), "text")
    if text is None:
        raise InvalidRequest("'text' is required and must be a non-empty string", param="text")
    return Upload(
        collection=_str(body.get("collection"), "collection", required=True) or "",
        source_uri=_str(body.get("source_uri"), "source_uri", required=True) or "",
        data=text.encode("utf-8"),
        filename=_str(body.get("filename"), "filename"),
        media_type=_str(body.get("media_type"), "media_type") or "text/plain",
        title=_str(body.get("title"), "title"),
        metadata=_metadata(body.get("metadata")),
    )


@router.post(
    "/documents",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    response_model=IngestOut,
    responses={200: {"model": IngestOut, "description": "unchanged: same content as latest"}},
)
async def create_document(
    request: Request, principal: CurrentPrincipal, registry: RegistryDep
) -> JSONResponse:
    """Ingest a document: a new one (201), a new version of it (201), or nothing (200)."""
    raw = await _read_body(request, registry.limits.max_bytes + _FORM_OVERHEAD)
    upload = await _parse_upload(request.headers, raw)

    def run() -> IngestOut:
        return service.ingest(
            registry.sessions,
            registry.indexes.get(),
            registry.embedder,
            tenant_id=principal.tenant_id,
            upload=upload,
            limits=registry.limits,
            actor=f"key:{principal.key_prefix}",
        )

    result = await run_in_threadpool(run)
    return JSONResponse(
        result.model_dump(mode="json"), status_code=200 if result.status == "unchanged" else 201
    )


@router.get("/documents")
def list_documents(
    principal: CurrentPrincipal,
    session: SessionDep,
    collection: Annotated[str | None, Query(pattern=COLLECTION_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: uuid.UUID | None = None,
) -> DocumentPage:
    """The tenant's documents with their latest version, oldest first."""
    return service.list_documents(
        session, tenant_id=principal.tenant_id, collection=collection, limit=limit, cursor=cursor
    )


@router.get("/documents/{document_id}/versions")
def list_versions(
    document_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> VersionList:
    """Every version of a document: content hash, when ingested, when superseded and by what."""
    return service.document_versions(
        session, tenant_id=principal.tenant_id, document_id=document_id
    )


@router.get("/chunks/{chunk_id}")
def get_chunk(chunk_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep) -> ChunkOut:
    """A chunk's text exactly as it was ingested, with its document, version, page, offsets."""
    return service.read_chunk(session, tenant_id=principal.tenant_id, chunk_id=chunk_id)
