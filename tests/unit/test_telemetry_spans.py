"""The span helpers the RAG and policy stages call, and how tracing is configured: no server."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator

import opentelemetry.semconv._incubating.attributes as incubating
import opentelemetry.semconv.attributes
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from service.errors import ConfigError, UpstreamTimeout
from service.telemetry import attributes
from service.telemetry.tracing import RetrievedDocument, Tracing, traceparent_of


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def test_retrieval_span_names_the_collection_documents_and_scores(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = Tracing.exporting_to(exporter)
    with tracing.retrieval("hr-policies", top_k=3) as span:
        Tracing.record_documents(
            span,
            [
                RetrievedDocument("doc-1#chunk-4", 0.91, version="v3"),
                RetrievedDocument("doc-2#chunk-1", 0.42, version="v1"),
            ],
        )
    (done,) = exporter.get_finished_spans()
    assert done.name == "retrieval hr-policies"
    assert done.kind is SpanKind.CLIENT
    assert dict(done.attributes or {}) == {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.provider.name": "qdrant",
        "gen_ai.data_source.id": "hr-policies",
        "gen_ai.request.top_k": 3.0,
        "gen_ai.retrieval.documents": '[{"id":"doc-1#chunk-4","score":0.91},'
        '{"id":"doc-2#chunk-1","score":0.42}]',
        "provenant.retrieval.document_ids": ("doc-1#chunk-4", "doc-2#chunk-1"),
        "provenant.retrieval.scores": (0.91, 0.42),
        "provenant.retrieval.document_versions": ("v3", "v1"),
    }


def test_policy_span_reports_the_stage_outcome_and_blocking_policy(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = Tracing.exporting_to(exporter)
    with tracing.policy("pre", bundle_sha256="ab" * 32) as span:
        Tracing.record_policy(span, outcome="block", decisions=4, blocked_by="no-pii")
    (done,) = exporter.get_finished_spans()
    assert done.name == "policy pre"
    assert done.kind is SpanKind.INTERNAL
    assert dict(done.attributes or {}) == {
        "provenant.policy.stage": "pre",
        "provenant.policy.bundle_sha256": "ab" * 32,
        "provenant.policy.outcome": "block",
        "provenant.policy.decisions": 4,
        "provenant.policy.blocked_by": "no-pii",
    }


def test_a_stage_that_raises_ends_its_span_as_an_error_with_the_error_code(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = Tracing.exporting_to(exporter)
    with pytest.raises(UpstreamTimeout), tracing.retrieval("kb"):
        raise UpstreamTimeout("vector store did not answer")
    with pytest.raises(KeyError), tracing.policy("post"):
        raise KeyError("x")
    timeout, key_error = exporter.get_finished_spans()
    assert timeout.status.status_code is StatusCode.ERROR
    assert (timeout.attributes or {})["error.type"] == "upstream_timeout"
    assert (key_error.attributes or {})["error.type"] == "KeyError"


def test_spans_nest_under_the_current_span(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing.exporting_to(exporter)
    tracer = tracing.provider.get_tracer("test")  # type: ignore[union-attr]
    with tracer.start_as_current_span("request") as parent:
        with tracing.retrieval("kb"):
            pass
        assert tracing.record_ids() == (
            f"{parent.get_span_context().trace_id:032x}",
            f"{parent.get_span_context().span_id:016x}",
        )
    child = next(s for s in exporter.get_finished_spans() if s.name == "retrieval kb")
    assert child.parent is not None and child.parent.span_id == parent.get_span_context().span_id


def test_tracing_off_records_nothing_and_hands_out_the_no_op_span() -> None:
    tracing = Tracing.off()
    assert not tracing.enabled
    with tracing.retrieval("kb", top_k=1) as span:
        Tracing.record_documents(span, [RetrievedDocument("d", 1.0)])
    assert span is INVALID_SPAN
    assert tracing.start_chat(upstream="http://x/v1", request_model="m", body={}) is INVALID_SPAN
    assert traceparent_of(INVALID_SPAN) is None
    assert tracing.record_ids() is None


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_configured(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], enabled: bool
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracing = Tracing.from_environment()
    try:
        assert tracing.enabled is enabled
    finally:
        tracing.shutdown()


def test_unsupported_exporter_settings_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        Tracing.from_environment()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="zipkin"):
        Tracing.from_environment()


def _semconv_names() -> set[str]:
    names: set[str] = set()
    for package in (opentelemetry.semconv.attributes, incubating):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            names |= {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    return names


def test_every_standard_attribute_name_is_one_the_semantic_conventions_define() -> None:
    ours = {
        value
        for name, value in vars(attributes).items()
        if name.isupper()
        and isinstance(value, str)
        and "." in value
        and value[0].isalpha()
        and "/" not in value
    }
    standard = {n for n in ours if not n.startswith("provenant.")}
    assert len(standard) > 25
    assert standard <= _semconv_names(), standard - _semconv_names()
    assert attributes.SCHEMA_URL in {s.value for s in Schemas}
