"""Server-sent events: accumulate an upstream stream and relay it with its audit at the end.

The relay forwards each upstream ``data:`` event as it arrives. When the upstream says
``[DONE]`` it commits the record first and only then sends the ``provenance`` chunk and
``[DONE]``. A client disconnect, an upstream cut or timeout, or invalid data ends the relay
with the matching status and the partial answer on the record. No database connection is
held while the stream is open: the writer thread commits at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import (
    ProvenantError,
    UpstreamError,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)
from service.lineage.models import RecordStatus

log = logging.getLogger("provenant.streaming")


@dataclass
class StreamAccumulator:
    """Rebuilds the answer from ``chat.completion.chunk`` deltas."""

    content: dict[int, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, list[Any]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    model: str | None = None
    id: str | None = None
    created: int | None = None
    rewritten: bool = False  # a policy changed the content: relay the rewritten answer

    def feed(self, chunk: dict[str, Any]) -> None:
        """Add one parsed chunk."""
        self.model = chunk.get("model") or self.model
        self.id = chunk.get("id") or self.id
        self.created = chunk.get("created") or self.created
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content.setdefault(index, []).append(delta["content"])
            if delta.get("tool_calls"):
                self.tool_calls.setdefault(index, []).extend(delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]

    def choices(self) -> list[dict[str, Any]]:
        """The answer per choice, as recorded."""
        indexes = sorted(set(self.content) | set(self.tool_calls) | set(self.finish))
        return [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": "".join(self.content.get(i, ())),
                    **({"tool_calls": self.tool_calls[i]} if i in self.tool_calls else {}),
                },
                "finish_reason": self.finish.get(i),
            }
            for i in indexes
        ]

    def rewrite(self, redact: Callable[[str], str]) -> None:
        """Apply a redaction to the accumulated text of every choice."""
        for index, parts in self.content.items():
            self.content[index] = [redact("".join(parts))]
        self.rewritten = True

    def rewritten_chunks(self) -> list[dict[str, Any]]:
        """The answer as one chunk per choice (what a held-back stream relays once rewritten)."""
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        chunks: list[dict[str, Any]] = [
            {**base, "model": self.model, "choices": [{**c, "delta": c.pop("message")}]}
            for c in self.choices()
        ]
        if self.usage is not None:
            chunks.append({**base, "model": self.model, "choices": [], "usage": self.usage})
        return chunks


@dataclass
class StreamEnd:
    """How a relayed stream ended."""

    status: RecordStatus
    error: ProvenantError | None = None


# finish(accumulator, end) commits the record and returns the provenance object; it raises
# StoreUnavailable when the record could not be committed, and a ProvenantError carrying the
# recorded provenance when a policy withheld the answer. It may rewrite the accumulator.
Finisher = Callable[[StreamAccumulator, StreamEnd], Awaitable[dict[str, Any]]]


class EventSource(Protocol):
    """What the relay reads: an upstream's ``aiohttp.ClientResponse``, or a built-in generator's
    events (``extractive``)."""

    @property
    def content(self) -> AsyncIterable[bytes]: ...

    def release(self) -> Any: ...

    def close(self) -> Any: ...


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class AuditedStream(Response):
    """An ASGI response relaying an upstream SSE stream, auditing it before it ends.

    With ``hold`` the events are kept back until the finisher has run (post-stage policies
    that may withhold or rewrite the answer), then relayed, or rewritten, or refused.
    """

    def __init__(
        self,
        upstream: EventSource,
        finish: Finisher,
        headers: dict[str, str],
        observe: Callable[[dict[str, Any]], None] | None = None,
        *,
        hold: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        self._upstream = upstream
        self._finish = finish
        self._observe = observe
        self.status_code = 200
        self.background = None
        self._start_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self._acc = StreamAccumulator()
        self._done = False
        self._recorded = False
        self._hold = hold
        self._held: list[bytes] = []
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            for task in (pump, watch):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._done:
                self._upstream.release()
            else:
                self._upstream.close()
            # the client went away (or sending failed) before the relay reached its record
            if not self._recorded:
                await self._record_quietly(StreamEnd(RecordStatus.client_disconnected))

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _finish_once(self, end: StreamEnd) -> dict[str, Any]:
        # the finisher queues the rows before its first suspension, so once this flag is set
        # the record reaches the writer even if this task is cancelled while waiting
        self._recorded = True
        return await self._finish(self._acc, end)

    async def _record_quietly(self, end: StreamEnd) -> None:
        try:
            await self._finish_once(end)
        except ProvenantError as exc:
            log.error("stream record (%s) not committed: %s", end.status, exc.code)

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._start_headers})
        end = await self._relay(send)
        if end.status is RecordStatus.ok:
            try:
                provenance = await self._finish_once(end)
            except ProvenantError as exc:
                await self._send_error(send, exc, exc.provenance)
                return
            if self._acc.rewritten:
                self._held = [sse(chunk) for chunk in self._acc.rewritten_chunks()]
            if self._held:
                await send(
                    {"type": "http.response.body", "body": b"".join(self._held), "more_body": True}
                )
            tail: dict[str, Any] = {
                "id": self._acc.id,
                "object": "chat.completion.chunk",
                "created": self._acc.created,
                "model": self._acc.model,
                "choices": [],
                "provenance": provenance,
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": sse(tail) + b"data: [DONE]\n\n",
                    "more_body": False,
                }
            )
            return
        recorded: dict[str, Any] | None = None
        try:
            recorded = await self._finish_once(end)
        except ProvenantError as exc:
            log.error("stream error record not committed: %s", exc.code)
        assert end.error is not None
        await self._send_error(send, end.error, recorded)

    async def _send_error(
        self, send: Send, exc: ProvenantError, provenance: dict[str, Any] | None
    ) -> None:
        error: dict[str, Any] = {
            "message": exc.message,
            "type": exc.type,
            "param": None,
            "code": exc.code,
        }
        if provenance is not None:
            # inside the error object: the SDKs hand only that object to the application
            error["provenance"] = provenance
        payload = {"error": error}
        await send({"type": "http.response.body", "body": sse(payload), "more_body": False})

    async def _relay(self, send: Send) -> StreamEnd:
        content = self._upstream.content
        limit = self._max_bytes
        size = 0
        try:
            async for raw in content:
                if limit is not None:
                    size += len(raw)
                    if size > limit:
                        return StreamEnd(
                            RecordStatus.upstream_error,
                            UpstreamResponseTooLarge(
                                f"upstream stream exceeds {limit} bytes; cut off"
                            ),
                        )
                line = raw.rstrip(b"\r\n")
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    self._done = True
                    return StreamEnd(RecordStatus.ok)
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return StreamEnd(
                        RecordStatus.upstream_error,
                        UpstreamError("upstream sent an event that is not JSON"),
                    )
                if not isinstance(chunk, dict):
                    return StreamEnd(
                        RecordStatus.upstream_error,
                        UpstreamError("upstream sent an event that is not an object"),
                    )
                if "error" in chunk:
                    msg = str((chunk.get("error") or {}).get("message", "upstream error"))
                    return StreamEnd(RecordStatus.upstream_error, UpstreamError(msg[:500]))
                self._acc.feed(chunk)
                if self._observe is not None:
                    self._observe(chunk)
                if self._hold:
                    self._held.append(b"data: " + data + b"\n\n")
                    continue
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + data + b"\n\n",
                        "more_body": True,
                    }
                )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return StreamEnd(
                RecordStatus.upstream_timeout,
                UpstreamTimeout(
                    "upstream stream timed out (silent past the read timeout, "
                    "or longer than the total timeout)"
                ),
            )
        except ValueError:  # aiohttp: an event line longer than its buffer
            return StreamEnd(
                RecordStatus.upstream_error,
                UpstreamResponseTooLarge("upstream sent an event too large to read"),
            )
        except aiohttp.ClientError as exc:
            return StreamEnd(
                RecordStatus.upstream_error,
                UpstreamError(f"upstream stream failed: {type(exc).__name__}"),
            )
        return StreamEnd(
            RecordStatus.upstream_error, UpstreamError("upstream stream ended before [DONE]")
        )
