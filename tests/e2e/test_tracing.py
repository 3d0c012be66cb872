"""Traces of real answers through the openai SDK, captured by an in-memory span exporter.

Each case below is one kind of answer and the spans it must produce under the SERVER span, in
order: a plain and a streamed answer, a RAG answer (``retrieval {collection}`` before ``chat``)
and a blocked one (a ``policy pre`` span, no ``chat`` span, a 403 still recorded).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.config import RagRoute, RoutesFile
from service.telemetry.tracing import Tracing
from tests.conftest import TenantKeys, make_settings, routes_for
from tests.support.documents import pdf, upload
from tests.support.servers import GatewayServer, UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Which policy applies to remote work?"}]


@dataclass(frozen=True)
class Traced:
    gateway: GatewayServer
    spans: InMemorySpanExporter


@pytest.fixture(scope="module")
def traced(
    database_url: str, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    data = tmp_path_factory.mktemp("data")
    bundle = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    bundle["policies"].append(
        {
            "id": "no-forbidden-topic",
            "description": "a pre-stage block for the trace test",
            "stage": "pre",
            "check": {"type": "blocked_terms", "patterns": ["forbidden-topic"]},
            "action": "block",
        }
    )
    (data / "bundle.yaml").write_text(yaml.safe_dump(bundle))
    settings = make_settings(database_url, data, policy_bundle=data / "bundle.yaml")
    rag = RagRoute(name="hr-rag", collection="hr", top_k=2, generator="echo")
    routes = RoutesFile(routes=[*routes_for(upstream.base_url).routes, rag])
    app = create_app(settings, routes, tracing=Tracing.exporting_to(exporter))
    server = GatewayServer(app).start()
    yield Traced(server, exporter)
    server.stop()


@dataclass(frozen=True)
class Case:
    """One kind of answer: how to ask for it and which spans it yields (children of SERVER)."""

    name: str
    model: str
    stream: bool
    children: tuple[str, ...]
    status: int = 200


ANSWERED = ("policy pre", "chat echo-1", "policy post", "audit commit")
SOURCED = ("policy pre", "retrieval hr", "chat echo-1", "policy post", "audit commit")
CASES = [
    Case("plain", "echo", False, ANSWERED),
    Case("streamed", "echo", True, ANSWERED),
    Case("rag", "hr-rag", False, SOURCED),
]
PAGES = ["Remote work needs a manager's approval.", "The remote work policy applies to all staff."]
BLOCKED = Case("blocked", "echo", False, ("policy pre", "audit commit"), 403)


def ask(traced: Traced, key: str, case: Case, traceparent: str | None) -> tuple[str, httpx.Headers]:
    """Ask through the openai SDK; return the audit id and the response headers."""
    headers = {"traceparent": traceparent} if traceparent else {}
    with openai.OpenAI(base_url=f"{traced.gateway.url}/v1", api_key=key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=case.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=64,
            temperature=0.2,
            stream=case.stream,
            stream_options={"include_usage": True} if case.stream else openai.NOT_GIVEN,
            extra_headers=headers,
        )
        if case.stream:
            chunks = list(raw.parse())  # type: ignore[call-overload]
            audit_id = chunks[-1].model_extra["provenance"]["audit_id"]
        else:
            audit_id = raw.parse().model_extra["provenance"]["audit_id"]
    return audit_id, raw.headers


def spans_of(traced: Traced, trace_id: int) -> list[ReadableSpan]:
    """The finished spans of a trace, once its SERVER span has ended (just after the last
    byte of the response went out)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in traced.spans.get_finished_spans() if s.context.trace_id == trace_id]
        if any(s.kind is SpanKind.SERVER for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def record(traced: Traced, key: str, audit_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{traced.gateway.url}/v1/audit/records/{audit_id}",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def assert_answer_trace(
    traced: Traced, key: str, case: Case, audit_id: str, headers: httpx.Headers
) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """The SERVER span, its children in order, the record and the response all agree."""
    rec = record(traced, key, audit_id)
    trace_id = int(rec["trace_id"], 16)
    spans = spans_of(traced, trace_id)
    servers = [s for s in spans if s.kind is SpanKind.SERVER and s.name.startswith("POST")]
    assert len(servers) == 1, [s.name for s in spans]
    server = servers[0]
    assert server.name == "POST /v1/chat/completions"
    # the record stores the gateway's own server span, and the response names it
    assert rec["span_id"] == f"{server.context.span_id:016x}"
    version, trace_hex, span_hex, flags = headers["traceparent"].split("-")
    assert (version, trace_hex, span_hex) == ("00", rec["trace_id"], rec["span_id"])
    assert int(flags, 16) & 1  # sampled
    attrs = server.attributes or {}
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == case.status
    assert attrs["provenant.audit.id"] == audit_id
    assert attrs["provenant.route"] == case.model
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert tuple(s.name for s in children) == case.children
    commit = children[-1]
    assert commit.attributes is not None
    assert commit.attributes["provenant.audit.id"] == audit_id
    assert commit.attributes["provenant.audit.batch_size"] >= 1
    assert commit.attributes["db.system.name"] in ("sqlite", "postgresql")
    # a child ends before its parent, and the record is committed before the answer leaves
    for child in children:
        assert child.end_time is not None and server.end_time is not None
        assert child.end_time <= server.end_time
    return server, {s.name: s for s in children}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_answer_spans_follow_the_genai_conventions_and_join_the_record(
    traced: Traced, upstream: UpstreamServer, tenant: TenantKeys, case: Case
) -> None:
    if case.name == "rag":
        uploaded = upload(traced.gateway.url, tenant.admin, "hr", "policy.pdf", pdf(PAGES))
        assert uploaded.status_code in (200, 201), uploaded.text
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    audit_id, headers = ask(traced, tenant.app, case, f"00-{caller_trace}-{caller_span}-01")

    server, children = assert_answer_trace(traced, tenant.app, case, audit_id, headers)
    # the incoming traceparent is honoured: same trace, the caller's span is the parent
    assert f"{server.context.trace_id:032x}" == caller_trace
    assert server.parent is not None and f"{server.parent.span_id:016x}" == caller_span

    chat = children["chat echo-1"]
    assert chat.kind is SpanKind.CLIENT
    assert chat.status.status_code is StatusCode.UNSET
    attrs = dict(chat.attributes or {})
    assert attrs.pop("server.port") == upstream.port
    if case.name == "rag":
        # the generator also read the numbered sources: a longer prompt than the question
        assert attrs.pop("gen_ai.usage.input_tokens") > 6
        attrs["gen_ai.usage.input_tokens"] = 6
        assert_retrieval_span(traced, tenant, children["retrieval hr"], audit_id)
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "echo-1",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        **({"gen_ai.request.stream": True} if case.stream else {}),
        "server.address": "127.0.0.1",
        "gen_ai.response.id": attrs["gen_ai.response.id"],
        "gen_ai.response.model": "echo-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 6,  # the demo upstream counts words
        "gen_ai.usage.output_tokens": 7,
    }
    assert str(attrs["gen_ai.response.id"]).startswith("chatcmpl-")
    # no content in spans: the prompt and answer stay in the audit record
    for span in (server, chat):
        assert not any("Which policy" in str(v) for v in (span.attributes or {}).values())
    # the upstream continued the trace from the chat span
    sent = next(r for r in reversed(upstream.requests) if r["body"]["messages"][-1] == MESSAGES[0])
    assert sent["traceparent"] == f"00-{caller_trace}-{chat.context.span_id:016x}-01"


def assert_retrieval_span(
    traced: Traced, tenant: TenantKeys, span: ReadableSpan, audit_id: str
) -> None:
    """The retrieval span names the collection and the documents found with their scores and
    versions, as the record keeps them, and no chunk text."""
    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    sources = record(traced, tenant.auditor, audit_id)["sources"]
    assert sources, "the RAG answer recorded no sources"
    assert attrs["gen_ai.operation.name"] == "retrieval"
    assert attrs["gen_ai.provider.name"] == "qdrant"
    assert attrs["gen_ai.data_source.id"] == "hr"
    assert attrs["gen_ai.request.top_k"] == 2.0
    assert list(attrs["provenant.retrieval.document_ids"]) == [s["document_id"] for s in sources]
    assert list(attrs["provenant.retrieval.scores"]) == pytest.approx([s["score"] for s in sources])
    assert list(attrs["provenant.retrieval.document_versions"]) == [
        str(s["version"]) for s in sources
    ]
    documents = json.loads(str(attrs["gen_ai.retrieval.documents"]))
    assert [d["id"] for d in documents] == [s["document_id"] for s in sources]
    assert not any(page in str(v) for page in PAGES for v in attrs.values())


def test_without_a_traceparent_the_server_span_starts_the_trace(
    traced: Traced, tenant: TenantKeys
) -> None:
    audit_id, headers = ask(traced, tenant.app, CASES[0], None)
    server, _ = assert_answer_trace(traced, tenant.app, CASES[0], audit_id, headers)
    assert server.parent is None


def test_a_failed_upstream_call_is_an_error_span_with_its_code(
    traced: Traced, tenant: TenantKeys
) -> None:
    resp = httpx.post(
        f"{traced.gateway.url}/v1/chat/completions",
        json={"model": "fail", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {tenant.app}"},
    )
    assert resp.status_code == 502
    trace_id = int(resp.headers["traceparent"].split("-")[1], 16)
    by_name = {s.name: s for s in spans_of(traced, trace_id)}
    assert set(by_name) == {
        "POST /v1/chat/completions",
        "policy pre",
        "chat fail-500",
        "audit commit",
    }
    chat = by_name["chat fail-500"]
    assert chat.status.status_code is StatusCode.ERROR
    assert (chat.attributes or {})["error.type"] == "upstream_error"
    server = by_name["POST /v1/chat/completions"]
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes or {})["http.response.status_code"] == 502
    assert (by_name["audit commit"].attributes or {})["provenant.audit.status"] == "upstream_error"


def test_other_routes_get_server_spans_named_by_their_template(
    traced: Traced, tenant: TenantKeys
) -> None:
    audit_id, _ = ask(traced, tenant.app, CASES[0], None)
    resp = httpx.get(
        f"{traced.gateway.url}/v1/audit/records/{audit_id}",
        headers={"Authorization": f"Bearer {tenant.app}"},
    )
    trace_id = int(resp.headers["traceparent"].split("-")[1], 16)
    (span,) = spans_of(traced, trace_id)
    assert span.name == "GET /v1/audit/records/{record_id}"
    assert (span.attributes or {})["http.response.status_code"] == 200
    # probes are not traced (they would drown the answers)
    before = len(traced.spans.get_finished_spans())
    assert "traceparent" not in httpx.get(f"{traced.gateway.url}/healthz").headers
    assert len(traced.spans.get_finished_spans()) == before


def test_a_blocked_request_has_its_policy_span_and_no_chat_span(
    traced: Traced, tenant: TenantKeys
) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "the forbidden-topic"}]}
    resp = httpx.post(
        f"{traced.gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {tenant.app}"},
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "policy_blocked"
    audit_id = resp.json()["error"]["provenance"]["audit_id"]
    _, children = assert_answer_trace(traced, tenant.app, BLOCKED, audit_id, resp.headers)
    policy = dict(children["policy pre"].attributes or {})
    assert policy["provenant.policy.blocked_by"] == "no-forbidden-topic"
    assert policy["provenant.policy.outcome"] == "block"
    assert policy["provenant.policy.decisions"] >= 1
