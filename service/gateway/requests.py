"""Reading and checking a chat-completions request body before it reaches a route."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive

from service.errors import ClientClosedRequest, InvalidRequest, PayloadTooLarge


async def read_json_body(
    receive: Receive, content_length: str | None, limit: int
) -> dict[str, Any]:
    """The body as a JSON object, refusing more than ``limit`` bytes (413) or non-JSON (400).

    Reads straight from the ASGI ``receive`` channel (no framework request object on the hot
    path); ``content_length`` is the request's header, checked before anything is read.
    """
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    raw = b""
    chunks: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("client disconnected while sending the request")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            if not raw:
                raw = chunk
            else:
                if chunks is None:
                    chunks = [raw]
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if chunks is not None:
        raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object")
    if b"\\u0000" in raw:  # no audit store holds NUL in text (PostgreSQL refuses it)
        raise InvalidRequest("request body contains a NUL character (\\u0000)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def too_deep(value: Any, limit: int) -> bool:
    """Whether JSON containers nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def check_chat_request(body: dict[str, Any], max_depth: int = 64) -> None:
    """Refuse bodies no upstream could answer, with the offending parameter named."""
    if too_deep(body, max_depth):
        raise InvalidRequest(f"request body nests deeper than {max_depth} levels")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]"
            )
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise InvalidRequest("'n' must be an integer between 1 and 128", param="n")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise InvalidRequest("'user' must be a string of at most 256 characters", param="user")
