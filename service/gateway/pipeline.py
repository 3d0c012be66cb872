"""One answer's lifecycle: route → (store check) → upstream → record committed → response."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.responses import Response

from service.config import OpenAIRoute, Route
from service.errors import (
    LineageUnavailable,
    ModelNotFound,
    ProvenantError,
    StoreUnavailable,
    UpstreamRejected,
    UpstreamTimeout,
)
from service.gateway.backends.openai import OpenAIBackend
from service.gateway.streaming import AuditedStream, StreamAccumulator, StreamEnd
from service.gateway.writer import AuditWriter
from service.integrity.receipts import Receipts
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange, parse_traceparent
from service.provenance.resolver import ModelResolver, Served
from service.tenancy.auth import Principal

AUDIT_HEADER = "X-Provenant-Audit-Id"


def provenance(
    ex: Exchange, response_model: str | None, receipt: str | None = None
) -> dict[str, Any]:
    """The ``provenance`` object every answer carries (``receipt``: the signed promise that
    its record enters the log). ``model`` carries the registry snapshot on registry-linked
    routes (``registry`` is null on the others)."""
    model: dict[str, Any] = {
        "requested": ex.body.get("model"),
        "upstream": ex.upstream_model,
        "response": response_model,
    }
    if ex.model_lineage is None:
        model["registry"] = None
    else:
        model.update(ex.model_lineage)
        model["lineage_stale"] = ex.lineage_stale
    return {
        "audit_id": str(ex.id),
        "route": ex.route_name,
        "model": model,
        "sources": [],
        "policies": [],
        "receipt": receipt,
    }


def _status_of(exc: ProvenantError) -> RecordStatus:
    if isinstance(exc, UpstreamTimeout):
        return RecordStatus.upstream_timeout
    if isinstance(exc, UpstreamRejected):
        return RecordStatus.upstream_rejected
    if isinstance(exc, LineageUnavailable):
        return RecordStatus.lineage_unavailable
    return RecordStatus.upstream_error


class Pipeline:
    """Serves chat completions for the configured routes, auditing every answer."""

    def __init__(
        self,
        routes: dict[str, Route],
        backend: OpenAIBackend,
        writer: AuditWriter,
        receipts: Receipts,
        models: ModelResolver | None = None,
    ):
        self.routes = routes
        self.models = models
        self._backend = backend
        self._writer = writer
        self._receipts = receipts

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
        assert isinstance(route, OpenAIRoute)
        # a model named by the registry is known once the route's snapshot is pinned
        upstream_model = route.upstream_model or (
            None if route.upstream_model_from else body["model"]
        )
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
        if route.registry is not None:
            await self._pin_model(ex, route)
        payload = {**body, "model": ex.upstream_model}
        if ex.stream:
            return await self._stream(ex, route, payload, traceparent)
        try:
            answer, ex.upstream_latency_ms = await self._backend.complete(
                route, payload, traceparent
            )
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise
        choices = [
            {
                "index": c.get("index", i),
                "message": c.get("message"),
                "finish_reason": c.get("finish_reason"),
            }
            for i, c in enumerate(answer["choices"])
            if isinstance(c, dict)
        ]
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

    async def _pin_model(self, ex: Exchange, route: OpenAIRoute) -> None:
        """Pin the answer to the route's current model snapshot (a dict lookup when the cache
        is warm); a route whose lineage is unavailable is refused, and the refusal recorded."""
        assert self.models is not None
        served: Served | None = self.models.current(route.name)
        if served is None:
            try:
                served = await self.models.resolve(route.name)
            except LineageUnavailable as exc:
                await self._record_failure(ex, exc)
                raise
        ex.model_snapshot_id = served.snapshot.id
        ex.model_snapshot_sha256 = served.snapshot.sha256
        ex.model_lineage = served.view
        ex.lineage_stale = served.stale
        if route.upstream_model_from is not None:
            ex.upstream_model = served.upstream_model

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
