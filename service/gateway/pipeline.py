"""One answer's lifecycle: route → (store check) → upstream → record committed → response."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import orjson
from opentelemetry.trace import INVALID_SPAN, Span
from starlette.responses import Response

from service.config import OpenAIRoute, Route
from service.errors import (
    EmbeddingsUnavailable,
    LineageUnavailable,
    ModelNotFound,
    PolicyBlocked,
    ProvenantError,
    StoreUnavailable,
    UpstreamRejected,
    UpstreamTimeout,
    VectorStoreUnavailable,
)
from service.gateway.backends.openai import OpenAIBackend
from service.gateway.backends.rag import Plan, Plans
from service.gateway.idempotency import Claim, Idempotency, Replay, replay_response, replay_row
from service.gateway.streaming import AuditedStream, StreamAccumulator, StreamEnd
from service.gateway.writer import AuditWriter
from service.integrity.receipts import Receipts
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange, answer_text, parse_traceparent, redact_json
from service.policies.bundle import Stage
from service.policies.checks import Facts
from service.policies.checks import Source as PolicySource
from service.policies.engine import Decision, Engine, Outcome
from service.policies.service import Policies
from service.provenance.resolver import ModelResolver, Served
from service.retrieval.sources import Source
from service.telemetry import attributes as attr
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import RetrievedDocument, Tracing, traceparent_of
from service.tenancy.auth import Principal

AUDIT_HEADER = "X-Provenant-Audit-Id"


def provenance(
    ex: Exchange,
    response_model: str | None,
    receipt: str | None = None,
    sources: list[Source] | None = None,
) -> dict[str, Any]:
    """The ``provenance`` object every answer carries (``receipt``: the signed promise that
    its record enters the log; ``sources``: what a sourced route's answer came from).
    ``model`` carries the registry snapshot on registry-linked routes (``registry`` is null
    on the others)."""
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
        "sources": [s.api() for s in sources] if sources else [],
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
    """Put a stage's decisions on the exchange: rows and leaf entries for the record, views
    for the answer."""
    record_id = ex.id
    ex.decisions += [d.row(record_id) for d in outcome.decisions]
    if ex.decision_leaves is None:
        ex.decision_leaves = []
    ex.decision_leaves += outcome.leaves
    ex.policy_view += outcome.views


def _blocked_error(decision: Decision) -> PolicyBlocked:
    policy = decision.policy
    reason = (decision.detail or {}).get("message") or policy.description
    return PolicyBlocked(f"Blocked by policy '{policy.id}' ({policy.severity}): {reason}")


def _status_of(exc: ProvenantError) -> RecordStatus:
    if isinstance(exc, VectorStoreUnavailable | EmbeddingsUnavailable):
        return RecordStatus.retrieval_error
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
        policies: Policies | None = None,
        models: ModelResolver | None = None,
        plans: Plans | None = None,
        *,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        idempotency: Idempotency | None = None,
    ):
        self.routes = routes
        self.models = models
        self._backend = backend
        self._writer = writer
        self._receipts = receipts
        self._policies = policies or Policies(None, None)
        self._plans = plans
        self._tracing = tracing or Tracing.off()
        self._metrics = metrics or Metrics()
        self._idempotency = idempotency

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
        self,
        principal: Principal,
        body: dict[str, Any],
        traceparent: str | None,
        idempotency_key: str | None = None,
    ) -> Response | AuditedStream:
        """Answer one chat-completions request, never without a committed record. With an
        ``idempotency_key`` a retry is given the first answer again (gateway.idempotency)."""
        started = time.perf_counter()
        route = self.route(body["model"])
        if not self._writer.healthy:
            raise StoreUnavailable("lineage store unavailable; no answer can be audited")
        if idempotency_key is None or self._idempotency is None:
            return await self._answer(principal, route, body, traceparent, started, None)
        claim = await self._idempotency.begin(principal, idempotency_key, body)
        if isinstance(claim, Replay):
            return replay_response(claim, AUDIT_HEADER)
        try:
            return await self._answer(principal, route, body, traceparent, started, claim)
        except BaseException:
            await self._idempotency.release(principal, claim)
            raise

    async def _answer(
        self,
        principal: Principal,
        route: Route,
        body: dict[str, Any],
        traceparent: str | None,
        started: float,
        claim: Claim | None,
    ) -> Response | AuditedStream:
        if route.kind != "openai":
            return await self._sourced(principal, route, body, traceparent, started, claim)
        assert isinstance(route, OpenAIRoute)
        # a model named by the registry is known once the route's snapshot is pinned
        upstream_model = route.upstream_model or (
            None if route.upstream_model_from else body["model"]
        )
        ex = self._exchange(principal, route, body, upstream_model, traceparent, started, claim)
        served = await self._pin_model(ex, route) if route.registry is not None else None
        engine = self._policies.engine
        facts: Facts | None = None
        if engine is not None:
            model = None if served is None else served.snapshot.content
            facts = await self._pre_policies(engine, ex, route, model)
        payload = {**ex.body, "model": ex.upstream_model}
        span = self._tracing.start_chat(
            upstream=route.upstream, request_model=ex.upstream_model or "", body=payload
        )
        # the upstream continues the trace from the chat span (or the caller's, not tracing)
        traceparent = traceparent_of(span) or traceparent
        if ex.stream:
            hold = engine is not None and engine.buffers_stream(
                route.name, route.kind, principal.tenant
            )
            return await self._stream(ex, route, payload, traceparent, span, engine, facts, hold)
        try:
            answer, ex.upstream_latency_ms = await self._backend.complete(
                route, payload, traceparent
            )
        except ProvenantError as exc:
            Tracing.end_chat(span, error_type=exc.code)
            await self._record_failure(ex, exc)
            raise
        choices = _choices(answer)
        _end_chat(span, answer, choices)
        return await self._deliver(ex, engine, facts, answer, choices)

    async def _stream(
        self,
        ex: Exchange,
        route: OpenAIRoute,
        payload: dict[str, Any],
        traceparent: str | None,
        span: Span,
        engine: Engine | None,
        facts: Facts | None,
        hold: bool,
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
            _end_streamed_chat(span, acc, end, acc.choices())
            return await self._deliver_stream(ex, acc, end, engine, facts)

        return AuditedStream(
            upstream,
            finish,
            _stream_headers(ex),
            hold=hold,
            max_bytes=self._backend.max_response_bytes,
        )

    async def _deliver(
        self,
        ex: Exchange,
        engine: Engine | None,
        facts: Facts | None,
        answer: dict[str, Any],
        choices: list[dict[str, Any]],
        sources: list[Source] | None = None,
    ) -> Response:
        """A whole answer's last steps: the post-stage policies (refuse it, or redact what
        leaves), its record and receipt, the commit, and only then the response."""
        if engine is not None and facts is not None:
            post = self._decide(engine, Stage.post, _post_facts(facts, choices, sources))
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
        answer["provenance"] = provenance(
            ex, answer.get("model"), self._receipts.issue(row, ex.delivered_sha256), sources
        )
        await self._commit(ex, row, answer)  # durable before the answer leaves
        return Response(
            orjson.dumps(answer), media_type="application/json", headers={AUDIT_HEADER: str(ex.id)}
        )

    async def _deliver_stream(
        self,
        ex: Exchange,
        acc: StreamAccumulator,
        end: StreamEnd,
        engine: Engine | None,
        facts: Facts | None,
        sources: list[Source] | None = None,
    ) -> dict[str, Any]:
        """A stream's last steps once the upstream is done: the post-stage policies on a
        complete answer (a held stream is refused or redacted before it leaves), its record,
        the commit; returns the provenance sent as the last event."""
        choices = acc.choices()
        if engine is not None and facts is not None and end.status is RecordStatus.ok:
            post = self._decide(engine, Stage.post, _post_facts(facts, choices, sources))
            _decided(ex, post)
            if post.blocked is not None:
                await self._refuse(ex, post.blocked, choices=choices, answer=None)
            if post.redact is not None:
                acc.rewrite(post.redact)
                choices = acc.choices()
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
        view = provenance(ex, acc.model, self._receipts.issue(row, ex.delivered_sha256), sources)
        await self._commit(ex, row, _streamed(acc, view) if ex.idempotency_key else None)
        return view

    def _exchange(
        self,
        principal: Principal,
        route: Route,
        body: dict[str, Any],
        upstream_model: str | None,
        traceparent: str | None,
        started: float,
        claim: Claim | None,
    ) -> Exchange:
        """The answer's exchange; its record joins the gateway's own server span (otherwise
        the caller's ids), and the server span names the audit id and route. With an
        idempotency ``claim`` the record takes the id the key reserved."""
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
        if claim is not None:
            ex.id, ex.idempotency_key = claim.record_id, claim.key
        if self._tracing.enabled:
            self._tracing.annotate(
                {
                    attr.PROVENANT_AUDIT_ID: str(ex.id),
                    attr.PROVENANT_ROUTE: route.name,
                    attr.PROVENANT_ROUTE_KIND: route.kind,
                    attr.PROVENANT_TENANT_ID: str(principal.tenant_id),
                }
            )
        return ex

    async def _sourced(
        self,
        principal: Principal,
        route: Route,
        body: dict[str, Any],
        traceparent: str | None,
        started: float,
        claim: Claim | None = None,
    ) -> Response | AuditedStream:
        """Answer on a ``rag``, ``extractive`` or ``rag-passthrough`` route: the record also
        keeps every source (retrieved or reported), cited or not, verified or not; policies
        see the sources (citations, grounding, staleness)."""
        assert self._plans is not None, "sourced routes need the document registry"
        ex = self._exchange(principal, route, body, None, traceparent, started, claim)
        # a generator linked to the registry (a fine-tuned model answering from sources): the
        # answer is pinned to its snapshot too, and asks the upstream for that version's adapter
        generator = self._plans.generator(route)
        served = None
        if generator is not None and generator.registry is not None:
            served = await self._pin_model(ex, generator)
        engine = self._policies.engine
        facts: Facts | None = None
        if engine is not None:
            model = None if served is None else served.snapshot.content
            facts = await self._pre_policies(engine, ex, route, model)
        plan = self._plans.plan(principal, route, ex.body)  # the prompt as the policies left it
        if served is not None and ex.upstream_model is not None:
            plan.upstream_model = ex.upstream_model  # the version's adapter (upstream_model_from)
        ex.upstream_model = plan.upstream_model
        collection = getattr(route, "collection", None)
        try:
            if collection is None:
                await plan.prepare()
            else:
                top_k = getattr(route, "top_k", None)
                with self._tracing.retrieval(collection, top_k=top_k) as span:
                    await plan.prepare()
                    Tracing.record_documents(span, _retrieved(plan.sources))
        except ProvenantError as exc:
            await self._record_failure(ex, exc)
            raise
        ex.retrievals = [s.retrieval_row() for s in plan.sources]  # kept if generation fails
        span = self._sourced_chat(ex, plan)
        traceparent = traceparent_of(span) or traceparent
        if ex.stream:
            hold = engine is not None and engine.buffers_stream(
                route.name, route.kind, principal.tenant
            )
            return await self._stream_sourced(ex, plan, traceparent, span, engine, facts, hold)
        try:
            answer, ex.upstream_latency_ms = await plan.complete(traceparent)
        except ProvenantError as exc:
            Tracing.end_chat(span, error_type=exc.code)
            await self._record_failure(ex, exc)
            raise
        choices = _choices(answer)
        _end_chat(span, answer, choices)
        sources = await plan.settle(answer_text(choices), answer)
        ex.retrievals = [s.retrieval_row() for s in sources]
        return await self._deliver(ex, engine, facts, answer, choices, sources)

    def _sourced_chat(self, ex: Exchange, plan: Plan) -> Span:
        """The ``chat`` span of a sourced answer's generator call (none for the built-in
        extractive generator, which calls nothing)."""
        if plan.upstream is None:
            return INVALID_SPAN
        model = plan.upstream_model or ""
        return self._tracing.start_chat(
            upstream=plan.upstream, request_model=model, body={**ex.body, "model": model}
        )

    async def _stream_sourced(
        self,
        ex: Exchange,
        plan: Plan,
        traceparent: str | None,
        span: Span,
        engine: Engine | None,
        facts: Facts | None,
        hold: bool,
    ) -> AuditedStream:
        started_upstream = time.perf_counter()
        try:
            upstream = await plan.open_stream(traceparent)
        except ProvenantError as exc:
            Tracing.end_chat(span, error_type=exc.code)
            await self._record_failure(ex, exc)
            raise

        async def settle_and_commit(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            ex.upstream_latency_ms = (time.perf_counter() - started_upstream) * 1000
            choices = acc.choices()
            _end_streamed_chat(span, acc, end, choices)
            sources = await plan.settle(answer_text(choices), None)
            ex.retrievals = [s.retrieval_row() for s in sources]
            return await self._deliver_stream(ex, acc, end, engine, facts, sources)

        async def finish(acc: StreamAccumulator, end: StreamEnd) -> dict[str, Any]:
            # settling may wait (passthrough resolves sources in SQL): shielded, so a client
            # that leaves meanwhile does not stop the record from being written
            return await asyncio.shield(asyncio.ensure_future(settle_and_commit(acc, end)))

        return AuditedStream(
            upstream,
            finish,
            _stream_headers(ex),
            observe=plan.observe,
            hold=hold,
            max_bytes=self._backend.max_response_bytes,
        )

    async def _pre_policies(
        self, engine: Engine, ex: Exchange, route: Route, model: dict[str, Any] | None
    ) -> Facts:
        """Run the pre-stage policies; refuse, redact the prompt or set the storage mode.
        Returns the facts the post stage extends with the answer."""
        tenant = ex.principal.tenant
        ex.policy_bundle_sha256 = engine.sha256
        messages = ex.body.get("messages")
        facts = Facts(route.name, route.kind, tenant, message_texts(messages), model)
        storage = engine.storage(route.name, route.kind, tenant, facts.memo)
        ex.content_mode, ex.redact = storage.mode, storage.redact
        ex.retention = engine.retention(route.name, route.kind, tenant)
        pre = self._decide(engine, Stage.pre, facts)
        _decided(ex, pre)
        if pre.blocked is not None:
            await self._refuse(ex, pre.blocked, choices=None, answer=None)
        if pre.redact is not None:
            # the upstream, the record and the post stage all see the redacted prompt
            ex.body = {**ex.body, "messages": redact_json(messages, pre.redact)}
            facts = replace(facts, prompt=message_texts(ex.body["messages"]))
        return facts

    def _decide(self, engine: Engine, stage: Stage, facts: Facts) -> Outcome:
        """Evaluate one stage of the bundle (inside its span when tracing); count its
        decisions."""
        evaluate = engine.pre if stage is Stage.pre else engine.post
        if not self._tracing.enabled:
            out = evaluate(facts)
        else:
            with self._tracing.policy(stage.value, bundle_sha256=engine.sha256) as span:
                out = evaluate(facts)
                Tracing.record_policy(
                    span,
                    outcome="block" if out.blocked else "allow",
                    decisions=len(out.decisions),
                    blocked_by=None if out.blocked is None else out.blocked.policy.id,
                )
        self._metrics.count_decisions(out.counts)
        return out

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
        await self._commit(ex, row)
        exc.headers[AUDIT_HEADER] = str(ex.id)
        exc.provenance = provenance(ex, None, None)
        raise exc

    async def _pin_model(self, ex: Exchange, route: OpenAIRoute) -> Served:
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
        return served

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

    async def _commit(
        self, ex: Exchange, row: dict[str, Any], delivered: dict[str, Any] | None = None
    ) -> None:
        """Make an answer's record (and lineage rows) durable: its audit-commit span, then the
        answer metrics. Raises StoreUnavailable if the record could not be committed.

        ``delivered``: the answer as the client gets it; with an idempotency key, an ``ok``
        answer's replay is committed with its record (its content only where the record keeps
        clear text)."""
        span = self._tracing.start_audit_commit(
            audit_id=str(ex.id), status=row["status"], db_system=self._writer.db_system
        )
        rows = ex.rows(row)
        if ex.idempotency_key is not None and row["status"] == RecordStatus.ok.value:
            kept = delivered if ex.content_mode == "full" else None
            table, replay = replay_row(ex.id, stream=ex.stream, response=kept)
            rows[table] = [replay]
        try:
            batch = await self._writer.commit(rows)
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


def _end_chat(span: Span, answer: dict[str, Any], choices: list[dict[str, Any]]) -> None:
    Tracing.end_chat(
        span,
        response_id=answer.get("id"),
        response_model=answer.get("model"),
        usage=answer.get("usage"),
        choices=choices,
    )


def _end_streamed_chat(
    span: Span, acc: StreamAccumulator, end: StreamEnd, choices: list[dict[str, Any]]
) -> None:
    Tracing.end_chat(
        span,
        response_id=acc.id,
        response_model=acc.model,
        usage=acc.usage,
        choices=choices,
        error_type=None if end.status is RecordStatus.ok else end.status.value,
    )


def _retrieved(sources: list[Source]) -> list[RetrievedDocument]:
    """What the retrieval span reports of the sources: document, version and score, no text."""
    return [
        RetrievedDocument(
            str(s.document_id), s.score, None if s.version is None else str(s.version)
        )
        for s in sources
        if s.document_id is not None and s.score is not None
    ]


def _streamed(acc: StreamAccumulator, view: dict[str, Any]) -> dict[str, Any]:
    """A streamed answer as a retry with its idempotency key is given it again."""
    return {
        "id": acc.id,
        "created": acc.created,
        "model": acc.model,
        "choices": acc.choices(),
        "usage": acc.usage,
        "provenance": view,
    }


def _stream_headers(ex: Exchange) -> dict[str, str]:
    return {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        AUDIT_HEADER: str(ex.id),
    }


def _post_facts(facts: Facts, choices: list[dict[str, Any]], sources: list[Source] | None) -> Facts:
    """What the post stage sees: the answer, and on sourced routes its sources."""
    if sources is None:
        return facts.answered(answer_text(choices))
    return _with_sources(facts, sources, choices)


def _with_sources(facts: Facts, sources: list[Source], choices: list[dict[str, Any]]) -> Facts:
    """The post-stage facts of a sourced answer: its sources as policies see them."""
    return Facts(
        facts.route,
        facts.route_kind,
        facts.tenant,
        facts.prompt,
        facts.model,
        [PolicySource(s.text or "", s.cited, bool(s.superseded)) for s in sources],
        answer_text(choices),
        facts.memo,
    )
