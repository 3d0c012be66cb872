"""``POST /v1/chat/completions`` served as pure ASGI, ahead of the framework.

The hot path pays for no routing, dependency solving, middleware layers or request object: a
measured ~29 % of the event loop's time went to FastAPI + Starlette (bench/RESULTS.md), and the
framework's per-request layers (telemetry check, body-limit and error middlewares) ran even in
front of a pure-ASGI middleware. The steps are those of the documented FastAPI route in
``endpoints.py``, which stays for the OpenAPI schema and answers identically when reached: the
same access check (``check_access`` over the ``ACCESS`` table), the same body limit and checks,
the same pipeline, and errors rendered by the same ``response_for`` as the app's exception
handlers (OpenAI-shaped, stable codes).
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from service.errors import response_for
from service.gateway.idempotency import parse_key
from service.gateway.requests import check_chat_request, read_json_body
from service.tenancy.auth import check_access

PATH = "/v1/chat/completions"


def is_chat_completion(scope: Scope) -> bool:
    """Whether the fast path serves this ASGI call."""
    return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")


async def serve_chat_completion(state: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one chat-completions call with what the lifespan put on ``state``."""
    authorization = content_length = traceparent = idempotency_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value.decode("latin-1")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"idempotency-key":
            idempotency_key = value.decode("latin-1")
    try:
        principal = await check_access(state.keys, "POST", PATH, authorization or "")
        key = parse_key(idempotency_key)
        body = await read_json_body(receive, content_length, state.settings.max_body_bytes)
        check_chat_request(body, state.settings.max_json_depth)
        response = await state.pipeline.chat(principal, body, traceparent, key)
    except Exception as exc:  # rendered exactly as the app's exception handlers would
        response = response_for(exc)
    await response(scope, receive, send)
