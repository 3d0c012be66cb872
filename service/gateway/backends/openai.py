"""The ``openai`` route kind (and ``rag-passthrough``, ``rag``'s generator): any OpenAI-compatible
upstream, over one shared aiohttp session.

aiohttp rather than httpx: on this machine class it serves ~10x the requests per second at 64
connections (bench/RESULTS.md), and the upstream client is the proxy's largest fixed cost.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import aiohttp
import orjson

from service.config import UpstreamRoute
from service.errors import (
    UpstreamError,
    UpstreamRejected,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)

_MAX_ERROR_BODY = 64 * 1024


def new_client_session(connections: int) -> aiohttp.ClientSession:
    """The process-wide upstream session (no environment proxies: traffic goes where routed).

    No ``skip_auto_headers``: every request sets its own User-Agent, and a session-level skip
    list makes aiohttp rebuild and copy the header multidict on each request (~6 % of the
    event loop's time at 64 connections).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


def _headers(route: UpstreamRoute, traceparent: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "provenant"}
    if route.api_key_env:
        secret = os.environ.get(route.api_key_env)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


@functools.lru_cache(maxsize=256)
def _timeout(total: float, connect: float, read: float, stream: bool) -> aiohttp.ClientTimeout:
    """A route's timeouts as aiohttp's (immutable) object, built once per route and mode."""
    # ``total`` bounds a stream too: an upstream dripping one byte per read timeout cannot
    # hold a connection (and the client) forever
    del stream
    return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    raw = await resp.content.read(_MAX_ERROR_BODY)
    detail = raw.decode("utf-8", "replace")
    try:
        parsed = orjson.loads(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = str(parsed["error"].get("message", detail))
    except orjson.JSONDecodeError:
        pass
    resp.release()
    if resp.status >= 500:
        raise UpstreamError(f"upstream answered HTTP {resp.status}: {detail[:500]}")
    raise UpstreamRejected(f"upstream refused the request: {detail[:500]}", status=resp.status)


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, refused once it exceeds ``limit`` bytes (without reading all of it)."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            resp.close()
            raise _too_large(limit)
        return await resp.read()  # aiohttp reads no more than the declared length
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            resp.close()
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> UpstreamResponseTooLarge:
    return UpstreamResponseTooLarge(f"upstream answer exceeds {limit} bytes; refused")


class OpenAIBackend:
    """Calls ``POST {upstream}/chat/completions`` with per-route timeouts."""

    def __init__(
        self, session: aiohttp.ClientSession, *, max_response_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self._session = session
        # an upstream answer larger than this is refused (a stream: when it grows past it)
        self.max_response_bytes = max_response_bytes

    async def _post(
        self, route: UpstreamRoute, payload: dict[str, Any], traceparent: str | None, stream: bool
    ) -> aiohttp.ClientResponse:
        t = route.timeouts
        timeout = _timeout(t.total, t.connect, t.read, stream)
        try:
            resp = await self._session.post(
                f"{route.upstream}/chat/completions",
                data=orjson.dumps(payload),
                headers=_headers(route, traceparent),
                timeout=timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream did not answer within {t.read:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from exc
        await _raise_for_status(resp)
        return resp

    async def complete(
        self, route: UpstreamRoute, payload: dict[str, Any], traceparent: str | None
    ) -> tuple[dict[str, Any], float]:
        """A non-streamed completion; returns the parsed body and the upstream latency (ms)."""
        started = time.perf_counter()
        resp = await self._post(route, payload, traceparent, stream=False)
        limit = self.max_response_bytes
        try:
            raw = await _read_at_most(resp, limit)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"upstream did not answer within {route.timeouts.read:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream connection failed: {type(exc).__name__}") from exc
        finally:
            resp.release()
        latency = (time.perf_counter() - started) * 1000
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("upstream returned a body that is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise UpstreamError("upstream returned JSON that is not a chat completion")
        return body, latency

    async def open_stream(
        self, route: UpstreamRoute, payload: dict[str, Any], traceparent: str | None
    ) -> aiohttp.ClientResponse:
        """Start a streamed completion; errors before the first byte raise like ``complete``."""
        resp = await self._post(route, payload, traceparent, stream=True)
        if not resp.content_type.startswith("text/event-stream"):
            resp.close()
            raise UpstreamError(
                f"upstream answered a streamed request with {resp.content_type or 'no type'}, "
                "not an event stream"
            )
        return resp
