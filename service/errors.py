"""Domain errors with a stable ``code`` and their one handler.

Every error leaves the service in the OpenAI error shape
``{"error": {"message", "type", "param", "code"}}`` so client SDKs keep working, and never
with a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("provenant.errors")


class ProvenantError(Exception):
    """Base error: HTTP status, OpenAI error type and a stable machine-readable code."""

    status = 500
    type = "api_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        # set when the refused answer was recorded: its provenance rides in the error object
        self.provenance: dict[str, Any] | None = None


class ConfigError(ProvenantError):
    code = "config_error"


class InvalidPolicyBundle(ConfigError):
    """A policy bundle failed validation (the message names file, line and key)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_policy_bundle"


class InvalidRequest(ProvenantError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(ProvenantError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class ExportTooLarge(ProvenantError):
    """An export over HTTP would hold more than the gateway builds in its serving process."""

    status = 422
    type = "invalid_request_error"
    code = "export_too_large"


class HeadersTooLarge(ProvenantError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class UnsupportedDocumentType(ProvenantError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_document_type"


class EmptyDocument(InvalidRequest):
    code = "empty_document"


class CorruptDocument(InvalidRequest):
    code = "corrupt_document"


class Conflict(ProvenantError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"


class IdempotencyKeyReused(ProvenantError):
    """The key was already used by this tenant for a request with another body."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class IdempotencyKeyInUse(ProvenantError):
    """The request first sent with this key is still being answered (retry shortly)."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_in_use"


class IdempotentReplayUnavailable(ProvenantError):
    """The answer first given for this key was recorded, but its content is not kept (content
    policy or erasure), so it cannot be given again."""

    status = 410
    type = "invalid_request_error"
    code = "idempotency_replay_unavailable"


class ClientClosedRequest(ProvenantError):
    """The client went away before its request was read; nobody is left to answer."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class Unauthenticated(ProvenantError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ProvenantError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ProvenantError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class NotSealedYet(NotFound):
    """The record exists but no signed checkpoint covers it yet (retry within the merge delay)."""

    code = "not_sealed_yet"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PolicyBlocked(ProvenantError):
    """A policy refused the request (``pre``) or withheld the answer (``post``)."""

    status = 403
    type = "invalid_request_error"
    code = "policy_blocked"


class RateLimited(ProvenantError):
    """The key sent more requests than its rate limit allows."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class LegalHoldActive(ProvenantError):
    """A legal hold protects the records an erasure would change."""

    status = 409
    type = "invalid_request_error"
    code = "legal_hold"


class StoreUnavailable(ProvenantError):
    status = 503
    type = "api_error"
    code = "lineage_store_unavailable"


class LineageUnavailable(ProvenantError):
    """A registry-linked route whose model lineage cannot be vouched for: the registry has been
    unreachable (or the version unresolvable) for longer than the route's max staleness."""

    status = 503
    type = "api_error"
    code = "lineage_unavailable"


class RegistryError(ProvenantError):
    """The model registry could not resolve a route's model (unreachable, unknown model,
    alias or version, or a documented tag missing)."""

    status = 502
    type = "api_error"
    code = "registry_error"


class VectorStoreUnavailable(ProvenantError):
    status = 503
    type = "api_error"
    code = "vector_store_unavailable"


class EmbeddingsUnavailable(ProvenantError):
    status = 503
    type = "api_error"
    code = "embeddings_unavailable"


class UpstreamError(ProvenantError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamResponseTooLarge(UpstreamError):
    code = "upstream_response_too_large"


class UpstreamRejected(ProvenantError):
    """The upstream answered 4xx: its status is relayed to the client."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status


def error_body(
    message: str,
    type_: str,
    code: str,
    param: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> bytes:
    """The OpenAI error body as bytes (``provenance`` inside the error object: the SDKs hand
    only that object to the application)."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if provenance is not None:
        error["provenance"] = provenance
    return orjson.dumps({"error": error})


def error_response(exc: ProvenantError) -> Response:
    """Render a domain error."""
    return Response(
        error_body(exc.message, exc.type, exc.code, exc.param, exc.provenance),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def response_for(exc: Exception) -> Response:
    """Render any exception raised while answering: domain errors as themselves, a store error
    as 503, anything else as a logged 500 (never a stack trace).

    The one mapping behind both the FastAPI handlers and the pure-ASGI chat path.
    """
    if isinstance(exc, ProvenantError):
        return error_response(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        log.error("lineage store error: %s", type(exc).__name__)
        return error_response(StoreUnavailable("lineage store unavailable"))
    if isinstance(exc, DataError):  # a value from the request the store cannot hold (e.g. NUL)
        return error_response(InvalidRequest("a value in the request cannot be stored"))
    log.exception("unhandled error", exc_info=exc)
    return error_response(ProvenantError("internal error"))


def install_handlers(app: FastAPI) -> None:
    """Register the single set of handlers that turn errors into OpenAI-shaped bodies."""

    async def on_error(_: Request, exc: Exception) -> Response:
        return response_for(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request"
        return error_response(InvalidRequest(message, param=loc or None))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = {401: Unauthenticated, 403: Forbidden, 404: NotFound}.get(exc.status_code)
        err: ProvenantError = (kind or InvalidRequest)(str(exc.detail))
        err.status = exc.status_code
        return error_response(err)

    app.add_exception_handler(ProvenantError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(OperationalError, on_error)
    app.add_exception_handler(InterfaceError, on_error)
    app.add_exception_handler(DataError, on_error)
    app.add_exception_handler(Exception, on_error)
