"""One answer's lifecycle: route → (store check) → upstream → record committed → response."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson
from starlette.responses import Response

from service.config import OpenAIRoute, Route
from service.errors import (
    ModelNotFound,
    PolicyBlocked,
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
from service.lineage.records import Exchange, answer_text, parse_traceparent, redact_json
from service.policies.engine import Decision, Engine, Facts, Outcome
from service.policies.service import Policies
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
        "policies": ex.policy_view,
        "receipt": receipt,
    }


def message_texts(messages: Any) -> list[str]:
    """The text of each message (string content and text parts), as policies read a prompt."""
    out: list[str] = []
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return out


def _decided(ex: Exchange, outcome: Outcome) -> None:
    """Put a stage's decisions on the exchange: rows for the record, views for the answer."""
    ex.decisions.extend(d.row() for d in outcome.decisions)
    ex.policy_view.extend(d.public() for d in outcome.decisions)


def _blocked_error(decision: Decision) -> PolicyBlocked:
    policy = decision.policy
    reason = (decision.detail or {}).get("message") or policy.description
    return PolicyBlocked(f"Blocked by policy '{policy.id}' ({policy.severity}): {reason}")


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
        policies: Policies | None = None,
    ):
        self.routes = routes
        self._backend = backend
        self._writer = writer
        self._receipts = receipts
        self._policies = policies or Policies(None, None)

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
        engine = self._policies.engine
        facts: Facts | None = None
        if engine is not None:
            facts = await self._pre_policies(engine, ex, route)
        payload = {**ex.body, "model": upstream_model}
        if ex.stream:
            hold = engine is not None and engine.buffers_stream(
                route.name, route.kind, principal.tenant
            )
            return await self._stream(ex, route, payload, traceparent, engine, facts, hold)
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
        if engine is not None and facts is not None:
            post = engine.post(facts.answered(answer_text(choices)))
            _decided(ex, post)
            if post.blocked is not None:
                await self._refuse(ex, post.blocked, choices=choices, answer=answer)
            if post.redact is not None:
                choices = redact_json(choices, post.redact)
                answer["choices"] = [
                    {**c, "message": r["message"]}
                    for c, r in zip(answer["choices"], choices, strict=False)
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
        answer["provenance"] = provenance(
            ex, answer.get("model"), self._receipts.issue(row, ex.delivered_sha256)
        )
        return Response(
            orjson.dumps(answer), media_type="application/json", headers={AUDIT_HEADER: str(ex.id)}
        )

    async def _stream(
        self,
        ex: Exchange,
        route: OpenAIRoute,
        payload: dict[str, Any],
        traceparent: str | None,
        engine: Engine | None,
        facts: Facts | None,
        hold: bool,
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
            if engine is not None and facts is not None and end.status is RecordStatus.ok:
                post = engine.post(facts.answered(answer_text(acc.choices())))
                _decided(ex, post)
                if post.blocked is not None:
                    await self._refuse(ex, post.blocked, choices=acc.choices(), answer=None)
                if post.redact is not None:
                    acc.rewrite(post.redact)
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
            return provenance(ex, acc.model, self._receipts.issue(row, ex.delivered_sha256))

        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            AUDIT_HEADER: str(ex.id),
        }
        return AuditedStream(upstream, finish, headers, hold=hold)

    async def _pre_policies(self, engine: Engine, ex: Exchange, route: OpenAIRoute) -> Facts:
        """Run the pre-stage policies; refuse, redact the prompt or set the storage mode.
        Returns the facts the post stage extends with the answer."""
        tenant = ex.principal.tenant
        ex.policy_bundle_sha256 = engine.sha256
        messages = ex.body.get("messages")
        facts = Facts(route.name, route.kind, tenant, message_texts(messages))
        storage = engine.storage(route.name, route.kind, tenant, facts.memo)
        ex.content_mode, ex.redact = storage.mode, storage.redact
        ex.retention = engine.retention(route.name, route.kind, tenant)
        pre: Outcome = engine.pre(facts)
        _decided(ex, pre)
        if pre.blocked is not None:
            await self._refuse(ex, pre.blocked, choices=None, answer=None)
        if pre.redact is not None:
            # the upstream, the record and the post stage all see the redacted prompt
            ex.body = {**ex.body, "messages": redact_json(messages, pre.redact)}
            facts = replace(facts, prompt=message_texts(ex.body["messages"]))
        return facts

    async def _refuse(
        self,
        ex: Exchange,
        decision: Decision,
        *,
        choices: list[dict[str, Any]] | None,
        answer: dict[str, Any] | None,
    ) -> None:
        """Record an answer a policy refused, then raise the refusal (with its provenance)."""
        exc = _blocked_error(decision)
        row = ex.record_row(
            status=RecordStatus.policy_blocked,
            http_status=exc.status,
            choices=choices,
            usage=None if answer is None else answer.get("usage"),
            response_model=None if answer is None else answer.get("model"),
            latency_ms=self._elapsed(ex),
            error_code=exc.code,
            error_message=exc.message,
        )
        await self._writer.commit(ex.rows(row))
        exc.headers[AUDIT_HEADER] = str(ex.id)
        exc.provenance = provenance(ex, None, None)
        raise exc

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
