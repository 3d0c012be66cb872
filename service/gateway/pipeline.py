"""One answer's lifecycle: route → (store check) → upstream → record committed → response."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.responses import Response

from service.config import OpenAIRoute, Route
from service.errors import (
    EmbeddingsUnavailable,
    ModelNotFound,
    ProvenantError,
    StoreUnavailable,
    UpstreamRejected,
    UpstreamTimeout,
    VectorStoreUnavailable,
)
from service.gateway.backends.openai import OpenAIBackend
from service.gateway.backends.rag import Plan, Plans
from service.gateway.streaming import AuditedStream, StreamAccumulator, StreamEnd
from service.gateway.writer import AuditWriter
from service.integrity.receipts import Receipts
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange, answer_text, parse_traceparent
from service.retrieval.sources import Source
from service.tenancy.auth import Principal

AUDIT_HEADER = "X-Provenant-Audit-Id"


def provenance(
    ex: Exchange,
    response_model: str | None,
    receipt: str | None = None,
    sources: list[Source] | None = None,
) -> dict[str, Any]:
    """The ``provenance`` object every answer carries (``receipt``: the signed promise that
    its record enters the log; ``sources``: what a sourced route's answer came from)."""
    return {
        "audit_id": str(ex.id),
        "route": ex.route_name,
        "model": {
            "requested": ex.body.get("model"),
            "upstream": ex.upstream_model,
            "response": response_model,
        },
        "sources": [s.api() for s in sources] if sources else [],
        "policies": [],
        "receipt": receipt,
    }


def _status_of(exc: ProvenantError) -> RecordStatus:
    if isinstance(exc, VectorStoreUnavailable | EmbeddingsUnavailable):
        return RecordStatus.retrieval_error
    if isinstance(exc, UpstreamTimeout):
        return RecordStatus.upstream_timeout
    if isinstance(exc, UpstreamRejected):
        return RecordStatus.upstream_rejected
    return RecordStatus.upstream_error


class Pipeline:
    """Serves chat completions for the configured routes, auditing every answer."""

    def __init__(
        self,
        routes: dict[str, Route],
        backend: OpenAIBackend,
        writer: AuditWriter,
        receipts: Receipts,
        plans: Plans | None = None,
    ):
        self.routes = routes
        self._backend = backend
        self._writer = writer
        self._receipts = receipts
        self._plans = plans

    def route(self, model: str) -> Route:
        """The route a client selects with ``model``."""
        route = self.routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model '{model[:200]}' does not exist: no route of that name "
                "(GET /v1/models lists them)",
                param="model",
            )
        return route

    async def chat(
        self, principal: Principal, body: dict[str, Any], traceparent: str | None
    ) -> Response | AuditedStream:
        """Answer one chat-completions request, never without a committed record."""
        started = time.perf_counter()
        route = self.route(body["model"])
        if not self._writer.healthy:
            raise StoreUnavailable("lineage store unavailable; no answer can be audited")
        if route.kind != "openai":
            return await self._sourced(principal, route, body, traceparent, started)
        assert isinstance(route, OpenAIRoute)
        upstream_model = route.upstream_model or body["model"]
        trace_id, span_id = parse_traceparent(traceparent)
        ex = Exchange(
            principal,
            route.name,
            route.kind,
            body,
            upstream_model,
            trace_id,
            span_id,
            started=started,
        )
        payload = {**body, "model": upstream_model}
        if ex.stream:
            return await self._stream(ex, route, payload, traceparent)
        try:
            answer, ex.upstream_latency_ms = await self._backend.complete(
                route, payload, traceparent
            )
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise
        choices = _choices(answer)
        row = ex.record_row(
            status=RecordStatus.ok,
            http_status=200,
            choices=choices,
            usage=answer.get("usage"),
            response_model=answer.get("model"),
            latency_ms=self._elapsed(ex),
        )
        await self._writer.commit(ex.rows(row))  # durable before the answer leaves
        answer["provenance"] = provenance(ex, answer.get("model"), self._receipts.issue(row))
        return Response(
            orjson.dumps(answer), media_type="application/json", headers={AUDIT_HEADER: str(ex.id)}
        )

    async def _stream(
        self, ex: Exchange, route: OpenAIRoute, payload: dict[str, Any], traceparent: str | None
    ) -> AuditedStream:
        started_upstream = time.perf_counter()
        try:
            upstream = await self._backend.open_stream(route, payload, traceparent)
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise

        async def finish(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            ex.upstream_latency_ms = (time.perf_counter() - started_upstream) * 1000
            err = end.error
            row = ex.record_row(
                status=end.status,
                http_status=200,
                choices=acc.choices(),
                usage=acc.usage,
                response_model=acc.model,
                latency_ms=self._elapsed(ex),
                error_code=err.code if err else None,
                error_message=err.message if err else None,
            )
            await self._writer.commit(ex.rows(row))
            return provenance(ex, acc.model, self._receipts.issue(row))

        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            AUDIT_HEADER: str(ex.id),
        }
        return AuditedStream(upstream, finish, headers)

    async def _sourced(
        self,
        principal: Principal,
        route: Route,
        body: dict[str, Any],
        traceparent: str | None,
        started: float,
    ) -> Response | AuditedStream:
        """Answer on a ``rag``, ``extractive`` or ``rag-passthrough`` route: the record also
        keeps every source (retrieved or reported), cited or not, verified or not."""
        assert self._plans is not None, "sourced routes need the document registry"
        plan = self._plans.plan(principal, route, body)
        trace_id, span_id = parse_traceparent(traceparent)
        ex = Exchange(
            principal,
            route.name,
            route.kind,
            body,
            plan.upstream_model,
            trace_id,
            span_id,
            started=started,
        )
        try:
            await plan.prepare()
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise
        ex.retrievals = [s.retrieval_row() for s in plan.sources]  # kept if generation fails
        if ex.stream:
            return await self._stream_sourced(ex, plan, traceparent)
        try:
            answer, ex.upstream_latency_ms = await plan.complete(traceparent)
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise
        choices = _choices(answer)
        sources = await plan.settle(answer_text(choices), answer)
        ex.retrievals = [s.retrieval_row() for s in sources]
        row = ex.record_row(
            status=RecordStatus.ok,
            http_status=200,
            choices=choices,
            usage=answer.get("usage"),
            response_model=answer.get("model"),
            latency_ms=self._elapsed(ex),
        )
        await self._writer.commit(ex.rows(row))  # durable before the answer leaves
        answer["provenance"] = provenance(
            ex, answer.get("model"), self._receipts.issue(row), sources
        )
        return Response(
            orjson.dumps(answer), media_type="application/json", headers={AUDIT_HEADER: str(ex.id)}
        )

    async def _stream_sourced(
        self, ex: Exchange, plan: Plan, traceparent: str | None
    ) -> AuditedStream:
        started_upstream = time.perf_counter()
        try:
            upstream = await plan.open_stream(traceparent)
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise

        async def settle_and_commit(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            ex.upstream_latency_ms = (time.perf_counter() - started_upstream) * 1000
            choices = acc.choices()
            sources = await plan.settle(answer_text(choices), None)
            ex.retrievals = [s.retrieval_row() for s in sources]
            err = end.error
            row = ex.record_row(
                status=end.status,
                http_status=200,
                choices=choices,
                usage=acc.usage,
                response_model=acc.model,
                latency_ms=self._elapsed(ex),
                error_code=err.code if err else None,
                error_message=err.message if err else None,
            )
            await self._writer.commit(ex.rows(row))
            return provenance(ex, acc.model, self._receipts.issue(row), sources)

        async def finish(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            # settling may wait (passthrough resolves sources in SQL): shielded, so a client
            # that leaves meanwhile does not stop the record from being written
            return await asyncio.shield(asyncio.ensure_future(settle_and_commit(acc, end)))

        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            AUDIT_HEADER: str(ex.id),
        }
        return AuditedStream(upstream, finish, headers, observe=plan.observe)

    async def _record_failure(self, ex: Exchange, exc: ProvenantError) -> None:
        """Record an answer that failed upstream; the client still gets the original error."""
        row = ex.record_row(
            status=_status_of(exc),
            http_status=exc.status,
            latency_ms=self._elapsed(ex),
            error_code=exc.code,
            error_message=exc.message,
        )
        exc.headers[AUDIT_HEADER] = str(ex.id)
        try:
            await self._writer.commit(ex.rows(row))
        except StoreUnavailable:
            exc.headers.pop(AUDIT_HEADER, None)

    @staticmethod
    def _elapsed(ex: Exchange) -> float:
        return (time.perf_counter() - ex.started) * 1000


def _choices(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded form of a completion's choices."""
    return [
        {
            "index": c.get("index", i),
            "message": c.get("message"),
            "finish_reason": c.get("finish_reason"),
        }
        for i, c in enumerate(answer["choices"])
        if isinstance(c, dict)
    ]
