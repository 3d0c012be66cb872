"""Traces: a tracer provider set up from the standard ``OTEL_*`` variables, and the gateway's spans.

One answer's trace (names per the GenAI semantic conventions pinned in ``attributes``)::

    POST /v1/chat/completions        SERVER    http.*, provenant.audit.id, provenant.route
      ├─ policy pre                  INTERNAL  provenant.policy.*          (policy engine)
      ├─ retrieval {collection}      CLIENT    gen_ai.data_source.id, document ids, scores
      ├─ chat {model}                CLIENT    gen_ai.request.*, gen_ai.response.*, gen_ai.usage.*
      ├─ policy post                 INTERNAL
      └─ audit commit                INTERNAL  provenant.audit.id, provenant.audit.batch_size

Without an exporter configured there is no provider: every helper returns the API's shared
non-recording span after one ``None`` check, builds no attributes and reads no clock, so tracing
off costs the hot path next to nothing (bench/RESULTS.md measures it). The provider is the
gateway's own (on ``app.state``), never the process-global one, so tests run side by side with
their own in-memory exporters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import __version__
from service.errors import ConfigError
from service.telemetry import attributes as a

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless


@dataclass(frozen=True)
class RetrievedDocument:
    """One retrieved chunk as a retrieval span reports it: no text, only identity and score."""

    id: str
    score: float
    version: str | None = None


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` naming ``span``, or None for the non-recording no-op span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def span_ids(span: Span) -> tuple[str, str] | None:
    """(trace id, span id) of ``span`` in lowercase hex, as audit records store them."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class SpanScope:
    """``with``-block around a span: ends it, and marks it failed if the block raised."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.span.is_recording():
            fail(self.span, getattr(exc, "code", None) or type(exc).__qualname__)
        self.span.end()


_NOOP_SCOPE = SpanScope(INVALID_SPAN)


def fail(span: Span, error_type: str) -> None:
    """Mark a span as ended in error, with a low-cardinality ``error.type`` (our error codes)."""
    span.set_attribute(a.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))


class Tracing:
    """The gateway's tracer, or none at all (no exporter configured)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self._tracer = (
            None
            if provider is None
            else provider.get_tracer("provenant", __version__, schema_url=a.SCHEMA_URL)
        )

    @classmethod
    def off(cls) -> Tracing:
        """No tracing: every span helper is a no-op."""
        return cls(None)

    @classmethod
    def from_environment(cls) -> Tracing:
        """Tracing as the standard variables configure it (``OTEL_SDK_DISABLED``,
        ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``_PROTOCOL`` /
        ``_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
        ``OTEL_BSP_*``); off unless an exporter is named or an OTLP endpoint is set."""
        exporters = _exporters(os.environ)
        if not exporters:
            return cls.off()
        provider = TracerProvider(resource=_resource())
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @classmethod
    def exporting_to(
        cls, exporter: SpanExporter, *, batch: bool = False, sampler: Sampler | None = None
    ) -> Tracing:
        """Tracing into a given exporter (tests: in memory, synchronously; bench: batched)."""
        provider = TracerProvider(resource=_resource(), sampler=sampler)
        processor: SpanProcessor = (
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Flush and stop the exporters (the lifespan's end)."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- the server span (one per HTTP request; see telemetry.http) -------------------------

    def start_server(
        self, scope: Mapping[str, Any], route: str | None, traceparent: str | None
    ) -> tuple[Span, object]:
        """Start the request's SERVER span as a child of the caller's ``traceparent`` (if valid)
        and make it current; returns the span and the token ``end_server`` needs."""
        assert self._tracer is not None
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        method = scope["method"]
        attributes: dict[str, Any] = {
            a.HTTP_REQUEST_METHOD: method,
            a.URL_PATH: scope["path"],
            a.URL_SCHEME: scope.get("scheme", "http"),
            a.NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
        }
        if route is not None:
            attributes[a.HTTP_ROUTE] = route
        server = scope.get("server")
        if server:
            attributes[a.SERVER_ADDRESS], attributes[a.SERVER_PORT] = server[0], server[1]
        client = scope.get("client")
        if client:
            attributes[a.CLIENT_ADDRESS] = client[0]
        span = self._tracer.start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    @staticmethod
    def end_server(
        span: Span, token: object, *, method: str, route: str | None, status: int
    ) -> None:
        """End the SERVER span with the matched route (known only after routing on the
        framework's routes) and the response status."""
        otel_context.detach(token)  # type: ignore[arg-type]
        if route is not None:
            span.set_attribute(a.HTTP_ROUTE, route)
            span.update_name(f"{method} {route}")
        span.set_attribute(a.HTTP_RESPONSE_STATUS_CODE, status)
        if status >= 500:
            span.set_attribute(a.ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def record_ids(self) -> tuple[str, str] | None:
        """The (trace id, span id) an audit record stores when tracing: the current SERVER
        span's, so the record and the trace join; None when not tracing."""
        if self._tracer is None:
            return None
        return span_ids(trace.get_current_span())

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        """Add attributes to the current span (the SERVER span, in the pipeline); ``None``
        values are left out."""
        if self._tracer is None:
            return
        span = trace.get_current_span()
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)

    # -- chat {model}: the upstream call ----------------------------------------------------

    def start_chat(
        self,
        *,
        upstream: str,
        request_model: str,
        body: Mapping[str, Any],
        provider: str = a.PROVIDER_OPENAI,
    ) -> Span:
        """Start the CLIENT span of one upstream chat call (ended by ``end_chat``)."""
        if self._tracer is None:
            return INVALID_SPAN
        attributes = {
            a.GEN_AI_OPERATION_NAME: a.OPERATION_CHAT,
            a.GEN_AI_PROVIDER_NAME: provider,
            a.GEN_AI_REQUEST_MODEL: request_model,
            **_server_of(upstream),
            **_request_attributes(body),
        }
        return self._tracer.start_span(
            f"{a.OPERATION_CHAT} {request_model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    @staticmethod
    def end_chat(
        span: Span,
        *,
        response_id: Any = None,
        response_model: Any = None,
        usage: Any = None,
        choices: Sequence[Mapping[str, Any]] = (),
        error_type: str | None = None,
    ) -> None:
        """End a chat span with what the upstream answered (a completion, or what a stream
        accumulated), or with its error (one of our stable error codes or record statuses)."""
        if not span.is_recording():
            return
        _set(span, a.GEN_AI_RESPONSE_ID, response_id, str)
        _set(span, a.GEN_AI_RESPONSE_MODEL, response_model, str)
        if isinstance(usage, Mapping):
            _set(span, a.GEN_AI_USAGE_INPUT_TOKENS, usage.get("prompt_tokens"), int)
            _set(span, a.GEN_AI_USAGE_OUTPUT_TOKENS, usage.get("completion_tokens"), int)
        reasons = [str(c["finish_reason"]) for c in choices if c.get("finish_reason")]
        if reasons:
            span.set_attribute(a.GEN_AI_RESPONSE_FINISH_REASONS, reasons)
        if error_type is not None:
            fail(span, error_type)
        span.end()

    # -- retrieval {collection}, policy {stage}: for the RAG and policy stages --------------

    def retrieval(
        self, collection: str, *, top_k: int | None = None, provider: str = "qdrant"
    ) -> SpanScope:
        """``with tracing.retrieval("hr-docs", top_k=5) as span:`` around one vector-store query;
        report what it found with ``record_documents(span, ...)``."""
        if self._tracer is None:
            return _NOOP_SCOPE
        attributes: dict[str, Any] = {
            a.GEN_AI_OPERATION_NAME: a.OPERATION_RETRIEVAL,
            a.GEN_AI_PROVIDER_NAME: provider,
            a.GEN_AI_DATA_SOURCE_ID: collection,
        }
        if top_k is not None:
            attributes[a.GEN_AI_REQUEST_TOP_K] = float(top_k)
        return SpanScope(
            self._tracer.start_span(
                f"{a.OPERATION_RETRIEVAL} {collection}", kind=SpanKind.CLIENT, attributes=attributes
            )
        )

    @staticmethod
    def record_documents(span: Span, documents: Iterable[RetrievedDocument]) -> None:
        """What a retrieval returned: ids, scores and document versions (never chunk text)."""
        if not span.is_recording():
            return
        docs = list(documents)
        span.set_attribute(
            a.GEN_AI_RETRIEVAL_DOCUMENTS,
            orjson.dumps([{"id": d.id, "score": d.score} for d in docs]).decode(),
        )
        span.set_attribute(a.PROVENANT_DOCUMENT_IDS, [d.id for d in docs])
        span.set_attribute(a.PROVENANT_RETRIEVAL_SCORES, [float(d.score) for d in docs])
        versions = [d.version for d in docs if d.version is not None]
        if versions:
            span.set_attribute(a.PROVENANT_DOCUMENT_VERSIONS, versions)

    def policy(self, stage: str, *, bundle_sha256: str | None = None) -> SpanScope:
        """``with tracing.policy("pre", bundle_sha256=...) as span:`` around one evaluation of
        the policy bundle; report the result with ``record_policy(span, ...)``."""
        if self._tracer is None:
            return _NOOP_SCOPE
        attributes = {a.PROVENANT_POLICY_STAGE: stage}
        if bundle_sha256:
            attributes[a.PROVENANT_POLICY_BUNDLE_SHA256] = bundle_sha256
        return SpanScope(self._tracer.start_span(f"policy {stage}", attributes=attributes))

    @staticmethod
    def record_policy(
        span: Span, *, outcome: str, decisions: int, blocked_by: str | None = None
    ) -> None:
        """The stage's overall outcome (e.g. ``allow``/``block``), how many policies decided,
        and which one blocked, if any."""
        if not span.is_recording():
            return
        span.set_attribute(a.PROVENANT_POLICY_OUTCOME, outcome)
        span.set_attribute(a.PROVENANT_POLICY_DECISIONS, decisions)
        if blocked_by is not None:
            span.set_attribute(a.PROVENANT_POLICY_BLOCKED_BY, blocked_by)

    # -- audit commit ----------------------------------------------------------------------

    def start_audit_commit(self, *, audit_id: str, status: str, db_system: str) -> Span:
        """Start the span of one answer's wait for its record to be durable."""
        if self._tracer is None:
            return INVALID_SPAN
        return self._tracer.start_span(
            "audit commit",
            attributes={
                a.PROVENANT_AUDIT_ID: audit_id,
                a.PROVENANT_AUDIT_STATUS: status,
                a.DB_SYSTEM_NAME: db_system,
            },
        )

    @staticmethod
    def end_audit_commit(
        span: Span, *, batch_size: int | None = None, error_type: str | None = None
    ) -> None:
        """End it with the size of the group commit it joined, or its error."""
        if not span.is_recording():
            return
        if batch_size is not None:
            span.set_attribute(a.PROVENANT_AUDIT_BATCH_SIZE, batch_size)
        if error_type is not None:
            fail(span, error_type)
        span.end()


# -- helpers --------------------------------------------------------------------------------

_NUMERIC_PARAMS = {
    "temperature": a.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": a.GEN_AI_REQUEST_TOP_P,
    "frequency_penalty": a.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": a.GEN_AI_REQUEST_PRESENCE_PENALTY,
}


def _request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling parameters of an OpenAI chat request, as ``gen_ai.request.*``."""
    out: dict[str, Any] = {}
    if body.get("stream"):
        out[a.GEN_AI_REQUEST_STREAM] = True
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if _is_int(max_tokens):
        out[a.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    for key, name in _NUMERIC_PARAMS.items():
        value = body.get(key)
        if _is_number(value):
            out[name] = float(value)
    if _is_int(body.get("seed")):
        out[a.GEN_AI_REQUEST_SEED] = body["seed"]
    n = body.get("n")
    if _is_int(n) and n != 1:
        out[a.GEN_AI_REQUEST_CHOICE_COUNT] = n
    stop = body.get("stop")
    if isinstance(stop, str):
        out[a.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        out[a.GEN_AI_REQUEST_STOP_SEQUENCES] = stop
    return out


@functools.lru_cache(maxsize=256)
def _server_of(upstream: str) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of an upstream base URL (parsed once per route;
    callers copy the dict, never change it)."""
    parts = urlsplit(upstream)
    out: dict[str, Any] = {}
    if parts.hostname:
        out[a.SERVER_ADDRESS] = parts.hostname
        out[a.SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
    return out


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _set(span: Span, key: str, value: Any, kind: type[Any]) -> None:
    if isinstance(value, kind) and not isinstance(value, bool):
        span.set_attribute(key, value)


def _resource() -> Resource:
    """``service.name`` = provenant unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    say otherwise; ``service.version`` = the package version."""
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "provenant"}))
    return resource


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the standard variables ask for (``otlp``, ``console``), checked:
    ConfigError for one Provenant does not ship. ``provenant serve`` calls it before starting."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    asked = environ.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")
    names = []
    for name in (n.strip().lower() for n in asked.split(",")):
        if name in ("", "none"):
            continue
        if name not in ("otlp", "console"):
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported (use otlp, console or none)"
            )
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: Provenant "
                    "exports OTLP over http/protobuf (a collector's port 4318)"
                )
        names.append(name)
    return names


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names(environ):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    return exporters
