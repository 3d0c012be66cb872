"""Route kinds that answer with sources: ``rag``, ``extractive`` and ``rag-passthrough``.

A plan carries one answer through the pipeline's steps: ``prepare`` (retrieval), ``complete``
or ``open_stream`` (the generator: an ``openai`` route, the built-in extractive generator, or
the external RAG app), ``observe`` (each streamed chunk) and ``settle`` (the final sources, with
``cited`` from the answer's ``[n]`` markers and, for passthrough, ``verified`` from the
registry). The pipeline records and responds; a plan never touches the writer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.config import (
    EXTRACTIVE,
    ExtractiveRoute,
    OpenAIRoute,
    RagPassthroughRoute,
    RagRoute,
    Route,
)
from service.gateway.backends.openai import OpenAIBackend
from service.gateway.streaming import EventSource
from service.retrieval import passthrough
from service.retrieval.citations import cited_refs
from service.retrieval.extractive import extractive_answer
from service.retrieval.prompt import query_text, rag_messages
from service.retrieval.retriever import Retriever
from service.retrieval.sources import Source, mark_cited
from service.tenancy.auth import Principal


class Plan(Protocol):
    """One answer of a sourced route kind."""

    upstream_model: str | None
    upstream: str | None  # the base URL the generator calls; None for the built-in generator
    sources: list[Source]

    async def prepare(self) -> None: ...

    async def complete(self, traceparent: str | None) -> tuple[dict[str, Any], float]: ...

    async def open_stream(self, traceparent: str | None) -> EventSource: ...

    def observe(self, chunk: dict[str, Any]) -> None: ...

    async def settle(self, answer: str, body: dict[str, Any] | None) -> list[Source]: ...


def completion(model: str, text: str) -> dict[str, Any]:
    """A chat completion body for a built-in answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


@dataclass
class TextEvents:
    """A built-in answer as an OpenAI event stream (role, a few content pieces, stop, [DONE])."""

    model: str
    text: str

    @property
    def content(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(chunk) + b"\n"

        yield event({"role": "assistant", "content": ""})
        for line in self.text.splitlines(keepends=True):
            yield event({"content": line})
        yield event({}, "stop")
        yield b"data: [DONE]\n"

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


class RagPlan:
    """``rag`` and ``extractive``: retrieve, then generate from numbered sources."""

    def __init__(
        self,
        principal: Principal,
        route: RagRoute | ExtractiveRoute,
        body: dict[str, Any],
        generator: OpenAIRoute | None,
        backend: OpenAIBackend,
        retriever: Retriever,
    ) -> None:
        self._principal = principal
        self._route = route
        self._body = body
        self._generator = generator
        self._backend = backend
        self._retriever = retriever
        self._query = query_text(body.get("messages") or [])
        self.upstream_model: str | None = (
            (generator.upstream_model or generator.name) if generator is not None else EXTRACTIVE
        )
        self.upstream: str | None = generator.upstream if generator is not None else None
        self.sources: list[Source] = []

    async def prepare(self) -> None:
        self.sources = await run_in_threadpool(
            self._retriever.search,
            tenant_id=self._principal.tenant_id,
            collection=self._route.collection,
            query=self._query,
            top_k=self._route.top_k,
        )

    def _payload(self) -> dict[str, Any]:
        assert isinstance(self._route, RagRoute)  # only `rag` routes have a generator
        messages = rag_messages(self._route.prompt_template, self._body["messages"], self.sources)
        return {**self._body, "model": self.upstream_model, "messages": messages}

    def _extractive(self) -> str:
        return extractive_answer(self._query, self.sources, self._route.max_quotes)

    async def complete(self, traceparent: str | None) -> tuple[dict[str, Any], float]:
        if self._generator is None:
            started = time.perf_counter()
            body = completion(self._route.name, self._extractive())
            return body, (time.perf_counter() - started) * 1000
        return await self._backend.complete(self._generator, self._payload(), traceparent)

    async def open_stream(self, traceparent: str | None) -> EventSource:
        if self._generator is None:
            return TextEvents(self._route.name, self._extractive())
        return await self._backend.open_stream(self._generator, self._payload(), traceparent)

    def observe(self, chunk: dict[str, Any]) -> None:
        return None

    async def settle(self, answer: str, body: dict[str, Any] | None) -> list[Source]:
        mark_cited(self.sources, cited_refs(answer, len(self.sources)))
        return self.sources


class PassthroughPlan:
    """``rag-passthrough``: the external app answers and reports its sources; we verify them."""

    def __init__(
        self,
        principal: Principal,
        route: RagPassthroughRoute,
        body: dict[str, Any],
        backend: OpenAIBackend,
        sessions: sessionmaker[Session],
    ) -> None:
        self._principal = principal
        self._route = route
        self._body = body
        self._backend = backend
        self._sessions = sessions
        self._reported: Any = None
        self.upstream_model: str | None = route.upstream_model or str(body["model"])
        self.upstream: str | None = route.upstream
        self.sources: list[Source] = []

    async def prepare(self) -> None:
        return None

    async def complete(self, traceparent: str | None) -> tuple[dict[str, Any], float]:
        payload = {**self._body, "model": self.upstream_model}
        return await self._backend.complete(self._route, payload, traceparent)

    async def open_stream(self, traceparent: str | None) -> EventSource:
        payload = {**self._body, "model": self.upstream_model}
        return await self._backend.open_stream(self._route, payload, traceparent)

    def observe(self, chunk: dict[str, Any]) -> None:
        found = passthrough.at_path(chunk, self._route.sources_path)
        if isinstance(found, list):
            self._reported = found

    def _resolve(self, reported: Any) -> list[Source]:
        with self._sessions() as session:
            return passthrough.resolve(
                session,
                tenant_id=self._principal.tenant_id,
                reported=reported,
                fields=self._route.source_fields,
                collection=self._route.collection,
            )

    async def settle(self, answer: str, body: dict[str, Any] | None) -> list[Source]:
        reported = (
            passthrough.at_path(body, self._route.sources_path)
            if body is not None
            else self._reported
        )
        self.sources = await run_in_threadpool(self._resolve, reported)
        mark_cited(self.sources, cited_refs(answer, len(self.sources)))
        return self.sources


class Plans:
    """Makes the plan for a sourced route."""

    def __init__(
        self,
        routes: dict[str, Route],
        backend: OpenAIBackend,
        retriever: Retriever,
        sessions: sessionmaker[Session],
    ) -> None:
        self._routes = routes
        self._backend = backend
        self._retriever = retriever
        self._sessions = sessions

    def generator(self, route: Route) -> OpenAIRoute | None:
        """The ``openai`` route a ``rag`` route generates with (None: built-in or external)."""
        if not isinstance(route, RagRoute) or route.generator == EXTRACTIVE:
            return None
        target = self._routes[route.generator]  # checked when the routes file loads
        assert isinstance(target, OpenAIRoute)
        return target

    def plan(self, principal: Principal, route: Route, body: dict[str, Any]) -> Plan:
        """The plan for one request on a ``rag``, ``extractive`` or ``rag-passthrough`` route."""
        if isinstance(route, RagPassthroughRoute):
            return PassthroughPlan(principal, route, body, self._backend, self._sessions)
        assert isinstance(route, RagRoute | ExtractiveRoute)
        generator = self.generator(route)
        return RagPlan(principal, route, body, generator, self._backend, self._retriever)
