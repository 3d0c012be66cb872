"""Answers with sources through the official openai SDK: retrieval from versioned documents,
[n] citations (streamed too), pages and chunks as they were, superseded versions, and sources
an external RAG app reports, verified against the registry."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.documents.index import VectorIndex
from service.tenancy.models import Tenant
from tests.conftest import TenantKeys
from tests.support.documents import get, pdf, upload
from tests.support.servers import REPLY_KEY, GatewayServer, UpstreamServer

PAGES = [
    "Welcome to Northwind. This handbook describes how we work together.",
    "Working hours are flexible. Core hours run from ten to three.",
    "Expense claims are submitted in the finance portal within thirty days.",
    "Laptops are encrypted and must be locked when unattended.",
    "Parental leave: birth parents receive sixteen weeks of parental leave at full pay.",
    "The canteen is open from eight to four on working days.",
]
QUESTION = "How many weeks of parental leave do birth parents receive?"
LEAVE = "# Annual leave\n\nEmployees accrue {days} days of paid annual leave per year.\n"


def sdk(gateway: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


def ask(gateway: GatewayServer, key: str, model: str, question: str = QUESTION) -> Any:
    with sdk(gateway, key) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}]
        )


def record(gateway: GatewayServer, key: str, audit_id: str) -> dict[str, Any]:
    resp = get(gateway.url, key, f"/v1/audit/records/{audit_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def ingest(gateway: GatewayServer, key: str, name: str, data: bytes, **fields: str) -> dict:
    resp = upload(gateway.url, key, "hr", name, data, **fields)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def test_the_cited_source_of_an_answer_only_on_page_5_is_page_5(
    rag_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES, title="Northwind handbook"))
    for route in ("hr-rag", "hr-assistant"):
        answer = ask(rag_gateway, tenant.app, route)
        sources = answer.model_extra["provenance"]["sources"]
        cited = [s for s in sources if s["cited"]]
        assert cited, (route, answer.choices[0].message.content, sources)
        assert all(s["page"] == 5 for s in cited)
        source = cited[0]
        assert source["title"] == "Northwind handbook" and source["version"] == 1
        assert source["verified"] is True and source["superseded"] is False
        assert set(source) == {
            "ref", "document_id", "title", "source_uri", "version", "content_sha256", "page",
            "chunk_id", "char_start", "char_end", "score", "cited", "verified", "superseded",
        }  # fmt: skip
        chunk = get(rag_gateway.url, tenant.app, f"/v1/chunks/{source['chunk_id']}").json()
        assert chunk["page"] == 5 and chunk["text"] == PAGES[4]
        assert (chunk["char_start"], chunk["char_end"]) == (0, len(PAGES[4]))
    # the extractive generator quotes the page with its marker
    assert "sixteen weeks" in answer.choices[0].message.content
    assert f"[{cited[0]['ref']}]" in answer.choices[0].message.content


def test_the_generator_sees_numbered_sources_and_every_retrieval_is_recorded(
    rag_gateway: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES))
    answer = ask(rag_gateway, tenant.app, "hr-rag-both", "parental leave, expense claims, laptops")
    content = answer.choices[0].message.content
    assert content.endswith("[1, 2].")
    prompt = next(
        r["body"]["messages"]
        for r in reversed(upstream.requests)
        if r["body"].get("model") == "cite-1_2"
    )
    assert (
        prompt[0]["role"] == "system"
        and "[1] handbook.pdf (version 1, page " in prompt[0]["content"]
    )
    assert prompt[-1] == {"role": "user", "content": "parental leave, expense claims, laptops"}
    provenance = answer.model_extra["provenance"]
    assert [s["cited"] for s in provenance["sources"]] == [True, True, False]
    assert [s["ref"] for s in provenance["sources"]] == [1, 2, 3]
    rec = record(rag_gateway, tenant.auditor, provenance["audit_id"])
    assert rec["route_kind"] == "rag" and rec["upstream_model"] == "cite-1_2"
    assert [(s["ref"], s["cited"], s["page"]) for s in rec["sources"]] == [
        (s["ref"], s["cited"], s["page"]) for s in provenance["sources"]
    ]
    assert all(s["current_at_answer_time"] is True for s in rec["sources"])


def test_streamed_answers_carry_sources_and_citations_split_across_chunks(
    rag_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES))
    for route in ("hr-rag-both", "hr-assistant"):
        with sdk(rag_gateway, tenant.app) as client:
            stream = client.chat.completions.create(
                model=route, messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            text, provenance = "", None
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                else:
                    provenance = chunk.model_extra["provenance"]
        assert provenance is not None, route
        cited = {s["ref"] for s in provenance["sources"] if s["cited"]}
        assert cited and all(f"{n}" in text for n in cited)
        rec = record(rag_gateway, tenant.app, provenance["audit_id"])
        assert rec["stream"] is True and rec["answer"] == text
        assert {s["ref"] for s in rec["sources"] if s["cited"]} == cited


def _index(gateway: GatewayServer) -> VectorIndex:
    index: VectorIndex = gateway.app.state.registry.indexes.get()
    return index


def test_a_new_version_is_cited_while_earlier_answers_keep_version_1(
    rag_gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session]
) -> None:
    ingest(rag_gateway, tenant.admin, "leave.md", LEAVE.format(days=25).encode())
    before = ask(rag_gateway, tenant.app, "hr-rag", "How many days of annual leave?")
    old = before.model_extra["provenance"]["sources"][0]
    assert old["version"] == 1 and old["cited"]

    v2 = ingest(rag_gateway, tenant.admin, "leave.md", LEAVE.format(days=28).encode())
    assert v2["status"] == "new_version"
    after = ask(rag_gateway, tenant.app, "hr-rag", "How many days of annual leave?")
    new = after.model_extra["provenance"]["sources"]
    assert [s["version"] for s in new] == [2] and new[0]["cited"] and not new[0]["superseded"]

    # the earlier answer still resolves to version 1's text, now reported superseded
    earlier = record(rag_gateway, tenant.auditor, before.model_extra["provenance"]["audit_id"])
    [source] = earlier["sources"]
    assert source["version"] == 1 and source["chunk_id"] == old["chunk_id"]
    assert source["current_at_answer_time"] is True and source["superseded"] is False
    assert source["superseded_at"] is not None
    chunk = get(rag_gateway.url, tenant.app, f"/v1/chunks/{old['chunk_id']}").json()
    assert chunk["text"] == LEAVE.format(days=25).strip()
    assert chunk["current"] is False and chunk["superseded_at"] == source["superseded_at"]

    # if version 1 were still searchable (an activation lost in a crash), an answer records it
    # as superseded at answer time; re-ingesting the same content repairs the index
    with sessions() as session:
        tid = session.scalars(select(Tenant.id).where(Tenant.name == tenant.tenant)).one()
    _index(rag_gateway).set_active("hr", [uuid.UUID(old["chunk_id"])], True)
    stale = ask(rag_gateway, tenant.app, "hr-rag", "How many days of annual leave?")
    by_version = {s["version"]: s for s in stale.model_extra["provenance"]["sources"]}
    assert by_version[1]["superseded"] is True and by_version[2]["superseded"] is False
    stale_record = record(rag_gateway, tenant.auditor, stale.model_extra["provenance"]["audit_id"])
    assert {s["version"]: s["current_at_answer_time"] for s in stale_record["sources"]} == {
        1: False,
        2: True,
    }
    again = ingest(rag_gateway, tenant.admin, "leave.md", LEAVE.format(days=28).encode())
    assert again["status"] == "unchanged"
    assert set(_index(rag_gateway).active_versions("hr", tid)) == {
        v2["document"]["latest_version"]["id"]
    }


def test_retrieval_stays_within_the_callers_tenant(
    rag_gateway: GatewayServer, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES))
    theirs = ask(rag_gateway, other_tenant.app, "hr-assistant")
    assert theirs.model_extra["provenance"]["sources"] == []
    assert "do not appear to answer" in theirs.choices[0].message.content


def test_a_failed_generator_is_recorded_with_what_was_retrieved(
    rag_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES))
    resp = httpx.post(
        f"{rag_gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenant.app}"},
        json={"model": "hr-rag-broken", "messages": [{"role": "user", "content": QUESTION}]},
        timeout=30,
    )
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_error"
    rec = record(rag_gateway, tenant.auditor, resp.headers["x-provenant-audit-id"])
    assert rec["status"] == "upstream_error"
    assert rec["sources"] and not any(s["cited"] for s in rec["sources"])


@pytest.fixture
def registered(rag_gateway: GatewayServer, tenant: TenantKeys) -> list[dict[str, Any]]:
    """The tenant's chunks of a small two-document registry, as GET /v1/chunks shows them."""
    ingest(rag_gateway, tenant.admin, "handbook.pdf", pdf(PAGES[:3]))
    ingest(rag_gateway, tenant.admin, "leave.md", LEAVE.format(days=25).encode())
    answer = ask(rag_gateway, tenant.app, "hr-assistant", "welcome hours expense annual leave")
    ids = [s["chunk_id"] for s in answer.model_extra["provenance"]["sources"]]
    return [get(rag_gateway.url, tenant.app, f"/v1/chunks/{i}").json() for i in ids]


def test_passthrough_sources_are_verified_only_on_an_exact_match(
    rag_gateway: GatewayServer,
    external_rag: UpstreamServer,
    tenant: TenantKeys,
    other_tenant: TenantKeys,
    registered: list[dict[str, Any]],
) -> None:
    a, b, c = registered[:3]
    foreign = ingest(rag_gateway, other_tenant.admin, "theirs.md", b"# Theirs\n\nOther secrets.")
    foreign_chunk = ask(rag_gateway, other_tenant.app, "hr-assistant", "other secrets")
    foreign_id = foreign_chunk.model_extra["provenance"]["sources"][0]["chunk_id"]
    assert foreign["status"] == "created"
    reported = [
        {"chunk_id": a["id"]},  # 1: a registered chunk by id
        {"point_id": b["id"], "text": b["text"]},  # 2: a Qdrant point id with its exact text
        {"source_uri": c["source_uri"], "text": c["text"], "score": 0.5},  # 3: URI + text
        {"chunk_id": a["id"], "text": a["text"] + " (edited)"},  # 4: a real id, altered text
        {"source_uri": "policies/bonus.md", "text": "Everyone gets a bonus.", "title": "Bonus"},
        {"chunk_id": foreign_id},  # 6: another tenant's chunk
        {"chunk_id": str(uuid.uuid4())},  # 7: an id nobody registered
        "just a string",  # 8: not even an object
        {"source_uri": c["source_uri"], "text_sha256": c["text_sha256"].upper()},  # 9: URI + hash
        {"source_uri": c["source_uri"], "text_sha256": "0" * 64},  # 10: a hash of nothing known
    ]
    external_rag.app[REPLY_KEY].update(
        answer="Use the portal [1][3] and ask HR [5].", sources=reported
    )
    answer = ask(rag_gateway, tenant.app, "external-rag", "how do I claim expenses?")
    sources = answer.model_extra["provenance"]["sources"]
    assert [s["verified"] for s in sources] == [True] * 3 + [False] * 5 + [True, False]
    assert [s["cited"] for s in sources] == [True, False, True, False, True] + [False] * 5
    assert [s["chunk_id"] for s in sources[:3]] == [a["id"], b["id"], c["id"]]
    assert sources[2]["score"] == 0.5 and sources[0]["version"] == a["version"]
    assert sources[4]["title"] == "Bonus" and sources[4]["chunk_id"] is None
    assert answer.model_extra["sources"] == reported  # the app's own field passes through

    rec = record(rag_gateway, tenant.auditor, answer.model_extra["provenance"]["audit_id"])
    assert rec["route_kind"] == "rag-passthrough"
    assert [s["verified"] for s in rec["sources"]] == [s["verified"] for s in sources]
    assert rec["sources"][4]["reported"] == reported[4]
    assert rec["sources"][7]["reported"] == {
        "unstored": True,
        "size": len(b'"just a string"'),
        "sha256": rec["sources"][7]["reported"]["sha256"],
    }
    assert rec["sources"][3]["chunk_id"] is None  # the altered text matched nothing

    # streamed: the sources arrive in the app's last chunk and are verified the same way
    with sdk(rag_gateway, tenant.app) as client:
        stream = client.chat.completions.create(
            model="external-rag",
            messages=[{"role": "user", "content": "how do I claim expenses?"}],
            stream=True,
        )
        tail = [chunk for chunk in stream if not chunk.choices][-1]
    streamed = tail.model_extra["provenance"]["sources"]
    assert [s["verified"] for s in streamed] == [s["verified"] for s in sources]
    assert [s["cited"] for s in streamed] == [s["cited"] for s in sources]


def test_a_busy_local_store_fails_closed_and_recovers(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: UpstreamServer,
    external_rag: UpstreamServer,
    sessions: sessionmaker[Session],
) -> None:
    from service.app import create_app
    from tests.conftest import make_settings, new_tenant, rag_routes

    settings = make_settings(database_url, tmp_path_factory.mktemp("busy"))
    holder = VectorIndex.open(settings)  # another process would hold it the same way
    server = GatewayServer(
        create_app(settings, rag_routes(upstream.base_url, external_rag.base_url))
    ).start()
    try:
        keys = new_tenant(sessions)
        body = {"model": "hr-assistant", "messages": [{"role": "user", "content": QUESTION}]}
        headers = {"Authorization": f"Bearer {keys.app}"}
        busy = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "vector_store_unavailable"
        rec = record(server, keys.auditor, busy.headers["x-provenant-audit-id"])
        assert rec["status"] == "retrieval_error"
        holder.close()
        deadline = time.monotonic() + 10
        while True:
            ok = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
            if ok.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok.status_code == 200, ok.text
    finally:
        server.stop()


def test_dense_embeddings_are_fused_with_the_sparse_vectors_when_configured(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: UpstreamServer,
    external_rag: UpstreamServer,
    sessions: sessionmaker[Session],
) -> None:
    from service.app import create_app
    from tests.conftest import make_settings, new_tenant, rag_routes

    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("dense"),
        embeddings_url=upstream.base_url,
        embeddings_model="demo-embed",
    )
    server = GatewayServer(
        create_app(settings, rag_routes(upstream.base_url, external_rag.base_url))
    ).start()
    try:
        keys = new_tenant(sessions)
        seen = len(upstream.embedding_requests)
        ingest(server, keys.admin, "handbook.pdf", pdf(PAGES))
        answer = ask(server, keys.app, "hr-assistant")
        calls = upstream.embedding_requests[seen:]
        assert calls[0] == {"model": "demo-embed", "input": PAGES}  # one chunk per page
        assert calls[-1] == {"model": "demo-embed", "input": [QUESTION]}
        assert _index(server).has_dense("hr")
        cited = [s for s in answer.model_extra["provenance"]["sources"] if s["cited"]]
        assert cited and cited[0]["page"] == 5
    finally:
        server.stop()
