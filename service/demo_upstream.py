"""A small OpenAI-protocol server for loopback use: the demo upstream, test peer and bench peer.

It answers deterministically ("Echo: <last user message>") and misbehaves on request, chosen by
the model name it is asked for, so one server covers every fault a proxy must survive:

| model            | behaviour                                                        |
|------------------|------------------------------------------------------------------|
| anything else    | a normal answer (streamed or not), usage counted in words        |
| ``fail-<5xx>``   | HTTP 5xx (``fail-500``, ``fail-503``...) with an OpenAI error body |
| ``reject-400``   | HTTP 400 with an OpenAI error body                               |
| ``slow-<ms>``    | waits <ms> milliseconds, then answers                            |
| ``bad-json``     | HTTP 200 whose body is not JSON                                  |
| ``bad-event``    | streams one chunk, then an event that is not JSON               |
| ``cut-stream``   | streams two chunks, then drops the connection without [DONE]     |
| ``truncate-sse`` | streams two chunks, then half an event, then closes              |
| ``drip-<ms>``    | streams one word every <ms> milliseconds (for disconnect tests)  |
| ``stall-stream`` | streams one chunk, then goes silent                              |
| ``huge-<kib>``   | answers <kib> KiB of text (streamed: in 1 KiB chunks)            |
| ``cite-<refs>``  | answers citing sources ``<refs>`` (``cite-1_3`` → ``[1, 3]``)      |

Tool definitions in the request make it answer with a tool call instead. ``POST /v1/embeddings``
returns deterministic 64-dimensional vectors (hashed words, L2-normalised), so texts sharing
words are close: enough to exercise dense retrieval with no model.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

REQUESTS_KEY = web.AppKey("requests", list)
EMBEDDINGS_KEY = web.AppKey("embeddings", list)
DELAY_KEY = web.AppKey("delay_s", float)


def _answer_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return f"Echo: {content}"
    return "Echo: (no user message)"


def _cited_answer(model: str) -> str:
    refs = model.removeprefix("cite-").replace("_", ", ")
    return f"According to the sources, the answer is in the documents [{refs}]."


EMBEDDING_DIMENSIONS = 64


def embedding(text: str) -> list[float]:
    """A deterministic unit vector: each word adds 1 to the dimension its CRC-32 picks."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        vector[zlib.crc32(word.encode()) % EMBEDDING_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json(loads=orjson.loads)
    request.app[EMBEDDINGS_KEY].append(body)
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    return web.json_response(
        {
            "object": "list",
            "model": body.get("model"),
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding(str(t))}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
    )


def _usage(body: dict[str, Any], answer: str) -> dict[str, int]:
    prompt = sum(
        len(str(m.get("content", "")).split())
        for m in body.get("messages") or []
        if isinstance(m, dict)
    )
    completion = len(answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}},
        status=status,
    )


def _suffix_ms(model: str, prefix: str) -> float:
    try:
        return float(model[len(prefix) :]) / 1000
    except ValueError:
        return 0.0


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    request.app[REQUESTS_KEY].append(
        {
            "body": body,
            "authorization": request.headers.get("Authorization"),
            "traceparent": request.headers.get("traceparent"),
        }
    )
    model = str(body.get("model", ""))
    delay = request.app[DELAY_KEY]
    if model.startswith("slow-"):
        delay += _suffix_ms(model, "slow-")
    if delay:
        await asyncio.sleep(delay)
    failing = re.fullmatch(r"fail-(5\d\d)", model)
    if failing:
        return _error(int(failing.group(1)), "demo upstream failure")
    if model == "reject-400":
        return _error(400, "demo upstream rejects this request")
    if model == "bad-json":
        return web.Response(text="{not json", content_type="application/json")
    if model.startswith("huge-"):
        kib = int(_suffix_ms(model, "huge-") * 1000)
        answer = " ".join(["x" * 1023] * kib)
    elif model.startswith("cite-"):
        answer = _cited_answer(model)
    else:
        answer = _answer_text(body)
    created = int(time.time())
    cid = f"chatcmpl-demo{time.monotonic_ns()}"
    n = int(body.get("n") or 1)
    if body.get("tools"):
        tool = body["tools"][0].get("function", {}).get("name", "tool")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_demo",
                    "type": "function",
                    "function": {"name": tool, "arguments": "{}"},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": answer}
        finish = "stop"
    if not body.get("stream"):
        return web.Response(
            body=orjson.dumps(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
                        for i in range(n)
                    ],
                    "usage": _usage(body, answer),
                }
            ),
            content_type="application/json",
        )
    try:
        return await _stream(request, body, cid, created, model, answer, n)
    except ConnectionResetError:  # the client left mid-stream: nothing more to send
        return web.Response(status=499)


async def _stream(
    request: web.Request,
    body: dict[str, Any],
    cid: str,
    created: int,
    model: str,
    answer: str,
    n: int,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    words = answer.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    drip = _suffix_ms(model, "drip-") if model.startswith("drip-") else 0.0
    for i in range(n):
        await resp.write(
            chunk(
                [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        )
    for k, piece in enumerate(pieces):
        if model == "cut-stream" and k == 2:
            assert request.transport is not None
            request.transport.close()
            return resp
        if model == "truncate-sse" and k == 2:
            await resp.write(b'data: {"id": "' + cid.encode() + b'", "object": "chat.compl')
            assert request.transport is not None
            request.transport.close()
            return resp
        if model == "bad-event" and k == 1:
            await resp.write(b"data: {not json\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        if model == "stall-stream" and k == 1:
            # polling: aiohttp offers no event for "client went away" to a running handler
            while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # silent until the client gives up
            return resp
        for i in range(n):
            await resp.write(
                chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
            )
        if drip:
            await asyncio.sleep(drip)
    for i in range(n):
        await resp.write(chunk([{"index": i, "delta": {}, "finish_reason": "stop"}]))
    if include_usage:
        await resp.write(chunk([], _usage(body, answer)))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": "echo-1", "object": "model", "created": 0, "owned_by": "demo"}],
        }
    )


def make_app(delay_ms: float = 0.0) -> web.Application:
    """The demo upstream as an aiohttp application; ``app[REQUESTS_KEY]`` logs what it got."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REQUESTS_KEY] = []
    app[EMBEDDINGS_KEY] = []
    app[DELAY_KEY] = delay_ms / 1000
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


def run(host: str = "127.0.0.1", port: int = 8081, delay_ms: float = 0.0) -> None:
    """Serve the demo upstream until interrupted (it keeps no request log when run this way)."""
    app = make_app(delay_ms)

    @web.middleware
    async def forget(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            app[REQUESTS_KEY].clear()
            app[EMBEDDINGS_KEY].clear()

    app.middlewares.append(forget)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
