"""One answer's lifecycle: route → (store check) → upstream → record committed → response."""

from __future__ import annotations

import time
from typing import Any

import orjson
from opentelemetry.trace import Span
from starlette.responses import Response

from service.config import OpenAIRoute, Route
from service.errors import (
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
from service.telemetry import attributes as attr
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing, traceparent_of
from service.tenancy.auth import Principal

AUDIT_HEADER = "X-Provenant-Audit-Id"


def provenance(
    ex: Exchange, response_model: str | None, receipt: str | None = None
) -> dict[str, Any]:
    """The ``provenance`` object every answer carries (``receipt``: the signed promise that
    its record enters the log)."""
    return {
        "audit_id": str(ex.id),
        "route": ex.route_name,
        "model": {
            "requested": ex.body.get("model"),
            "upstream": ex.upstream_model,
            "response": response_model,
        },
        "sources": [],
        "policies": [],
        "receipt": receipt,
    }


def _status_of(exc: ProvenantError) -> RecordStatus:
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
        *,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ):
        self.routes = routes
        self._backend = backend
        self._writer = writer
        self._receipts = receipts
        self._tracing = tracing or Tracing.off()
        self._metrics = metrics or Metrics()

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
        upstream_model = route.upstream_model or body["model"]
        # tracing: the record joins the gateway's own server span; otherwise the caller's ids
        trace_id, span_id = self._tracing.record_ids() or parse_traceparent(traceparent)
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
        if self._tracing.enabled:
            self._tracing.annotate(
                {
                    attr.PROVENANT_AUDIT_ID: str(ex.id),
                    attr.PROVENANT_ROUTE: route.name,
                    attr.PROVENANT_ROUTE_KIND: route.kind,
                    attr.PROVENANT_TENANT_ID: str(principal.tenant_id),
                }
            )
        payload = {**body, "model": upstream_model}
        span = self._tracing.start_chat(
            upstream=route.upstream, request_model=upstream_model, body=payload
        )
        # the upstream continues the trace from the chat span (or the caller's, not tracing)
        traceparent = traceparent_of(span) or traceparent
        if ex.stream:
            return await self._stream(ex, route, payload, traceparent, span)
        try:
            answer, ex.upstream_latency_ms = await self._backend.complete(
                route, payload, traceparent
            )
        except ProvenantError as exc:
            Tracing.end_chat(span, error_type=exc.code)
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
        Tracing.end_chat(
            span,
            response_id=answer.get("id"),
            response_model=answer.get("model"),
            usage=answer.get("usage"),
            choices=choices,
        )
        row = ex.record_row(
            status=RecordStatus.ok,
            http_status=200,
            choices=choices,
            usage=answer.get("usage"),
            response_model=answer.get("model"),
            latency_ms=self._elapsed(ex),
        )
        await self._commit(ex, row)  # durable before the answer leaves
        answer["provenance"] = provenance(ex, answer.get("model"), self._receipts.issue(row))
        return Response(
            orjson.dumps(answer), media_type="application/json", headers={AUDIT_HEADER: str(ex.id)}
        )

    async def _stream(
        self,
        ex: Exchange,
        route: OpenAIRoute,
        payload: dict[str, Any],
        traceparent: str | None,
        span: Span,
    ) -> AuditedStream:
        started_upstream = time.perf_counter()
        try:
            upstream = await self._backend.open_stream(route, payload, traceparent)
        except ProvenantError as exc:
            Tracing.end_chat(span, error_type=exc.code)
            await self._record_failure(ex, exc)
            raise

        async def finish(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            ex.upstream_latency_ms = (time.perf_counter() - started_upstream) * 1000
            err = end.error
            choices = acc.choices()
            Tracing.end_chat(
                span,
                response_id=acc.id,
                response_model=acc.model,
                usage=acc.usage,
                choices=choices,
                error_type=None if end.status is RecordStatus.ok else end.status.value,
            )
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
            await self._commit(ex, row)
            return provenance(ex, acc.model, self._receipts.issue(row))

        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            AUDIT_HEADER: str(ex.id),
        }
        return AuditedStream(upstream, finish, headers)

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
            await self._commit(ex, row)
        except StoreUnavailable:
            exc.headers.pop(AUDIT_HEADER, None)

    async def _commit(self, ex: Exchange, row: dict[str, Any]) -> None:
        """Make an answer's record (and lineage rows) durable: its audit-commit span, then the
        answer metrics. Raises StoreUnavailable if the record could not be committed."""
        span = self._tracing.start_audit_commit(
            audit_id=str(ex.id), status=row["status"], db_system=self._writer.db_system
        )
        try:
            batch = await self._writer.commit(ex.rows(row))
        except BaseException as exc:  # cancelled too: the span still ends
            Tracing.end_audit_commit(span, error_type=getattr(exc, "code", type(exc).__name__))
            raise
        Tracing.end_audit_commit(span, batch_size=batch)
        upstream_ms = ex.upstream_latency_ms
        self._metrics.observe_answer(
            ex.route_name,
            row["status"],
            stream=ex.stream,
            upstream_s=None if upstream_ms is None else upstream_ms / 1000,
            input_tokens=row["prompt_tokens"],
            output_tokens=row["completion_tokens"],
        )

    @staticmethod
    def _elapsed(ex: Exchange) -> float:
        return (time.perf_counter() - ex.started) * 1000
