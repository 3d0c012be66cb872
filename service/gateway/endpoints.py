"""OpenAI-compatible endpoints: thin, they parse and hand over to the pipeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import PipelineDep, SettingsDep
from service.gateway.idempotency import parse_key
from service.gateway.requests import check_chat_request, read_json_body
from service.gateway.streaming import AuditedStream
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["openai"])

_CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                        "user": {"type": "string"},
                    },
                    "additionalProperties": True,
                }
            }
        },
    }
}


@router.post("/chat/completions", openapi_extra=_CHAT_BODY, response_model=None)
async def chat_completions(
    request: Request, principal: CurrentPrincipal, pipeline: PipelineDep, settings: SettingsDep
) -> Response | AuditedStream:
    """Create a chat completion through a route; the answer carries its provenance."""
    # served by fastpath.serve_chat_completion ahead of the framework (app.Gateway); this route
    # documents the call in the OpenAPI schema and answers identically if ever reached
    key = parse_key(request.headers.get("idempotency-key"))
    body = await read_json_body(
        request.receive, request.headers.get("content-length"), settings.max_body_bytes
    )
    check_chat_request(body, settings.max_json_depth)
    return await pipeline.chat(principal, body, request.headers.get("traceparent"), key)


@router.get("/models")
async def list_models(principal: CurrentPrincipal, pipeline: PipelineDep) -> dict[str, Any]:
    """The routes, as OpenAI models; a registry-linked route shows the version it currently
    serves (from the gateway's cache: no registry call)."""
    models = pipeline.models
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "provenant",
                "provenant": {
                    "kind": route.kind,
                    "registry": models.status(name) if models is not None else None,
                },
            }
            for name, route in pipeline.routes.items()
        ],
    }
