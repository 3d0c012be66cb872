"""``Idempotency-Key``: a retried request gets the first answer and audit id back, never a
second answer or record; the key is per tenant, bound to its request body, safe under
concurrent duplicates (in one gateway and across two), freed by a failed answer, and its kept
answer is erased with its record's content (on SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.base import utcnow
from service.lineage.models import AuditRecord, IdempotencyKey, IdempotentReplay
from service.privacy.erasure import purge_idempotency
from tests.conftest import TenantKeys, make_settings, routes_for
from tests.support.documents import pdf, upload
from tests.support.servers import GatewayServer, UpstreamServer

MSG = [{"role": "user", "content": "charge me once"}]


def post(
    gateway: GatewayServer, key: str, body: dict[str, Any], idem: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=15)


def records_for(sessions: sessionmaker[Session], tenant: TenantKeys, prompt: str) -> int:
    """How many records the tenant has whose prompt contains ``prompt``."""
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditRecord)
                .where(AuditRecord.prompt.contains(prompt))
            )
            or 0
        )


def test_a_retry_gets_the_same_answer_and_audit_id_and_no_second_record(
    gateway: GatewayServer,
    tenant: TenantKeys,
    sessions: sessionmaker[Session],
    upstream: UpstreamServer,
) -> None:
    prompt = f"once {uuid.uuid4().hex}"
    body = {"model": "echo", "messages": [{"role": "user", "content": prompt}]}
    idem = str(uuid.uuid4())
    before = len(upstream.requests)
    first = post(gateway, tenant.app, body, idem)
    second = post(gateway, tenant.app, body, idem)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json() == second.json()  # same answer, same provenance, same receipt
    audit_id = first.json()["provenance"]["audit_id"]
    assert second.headers["x-provenant-audit-id"] == audit_id
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(upstream.requests) - before == 1
    assert records_for(sessions, tenant, prompt) == 1
    # through the official SDK, as an app would retry
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=tenant.app, max_retries=0, timeout=10
    ) as client:
        again = client.chat.completions.create(
            model="echo",
            messages=body["messages"],  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": idem},
        )
    assert again.model_extra is not None
    assert again.model_extra["provenance"]["audit_id"] == audit_id
    assert again.choices[0].message.content == f"Echo: {prompt}"


def test_a_streamed_retry_is_given_the_same_answer_as_a_stream(
    gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session]
) -> None:
    prompt = f"stream once {uuid.uuid4().hex}"
    idem = f"stream-{uuid.uuid4()}"
    got: list[tuple[str, str]] = []
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=tenant.app, max_retries=0, timeout=10
    ) as client:
        for _ in range(2):
            chunks = list(
                client.chat.completions.create(
                    model="echo",
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={"Idempotency-Key": idem},
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].model_extra is not None
            got.append((text, chunks[-1].model_extra["provenance"]["audit_id"]))
            assert any(c.usage is not None for c in chunks)
    assert got[0] == got[1] and got[0][0] == f"Echo: {prompt}"
    assert records_for(sessions, tenant, prompt) == 1


def test_the_same_key_with_another_body_is_refused(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    idem = str(uuid.uuid4())
    assert post(gateway, tenant.app, {"model": "echo", "messages": MSG}, idem).status_code == 200
    other = {"model": "echo", "messages": [{"role": "user", "content": "charge me twice"}]}
    resp = post(gateway, tenant.app, other, idem)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    # streamed or not is part of the request
    resp = post(gateway, tenant.app, {"model": "echo", "messages": MSG, "stream": True}, idem)
    assert resp.json()["error"]["code"] == "idempotency_key_reused"


def test_keys_are_per_tenant(
    gateway: GatewayServer, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    idem = str(uuid.uuid4())
    body = {"model": "echo", "messages": MSG}
    mine = post(gateway, tenant.app, body, idem).json()["provenance"]["audit_id"]
    theirs = post(gateway, other_tenant.app, body, idem).json()["provenance"]["audit_id"]
    assert mine != theirs


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "x" * 256, "caf\u00e9", "tab\tkey"],
    ids=["empty", "space", "long", "non-ascii", "tab"],
)
def test_an_invalid_key_is_a_clear_400(
    gateway: GatewayServer, tenant: TenantKeys, bad: str
) -> None:
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "echo", "messages": MSG},
        headers={"Authorization": f"Bearer {tenant.app}", "Idempotency-Key": bad.encode()},  # type: ignore[dict-item]
        timeout=10,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_idempotency_key"


@pytest.fixture
def twin(database_url: str, upstream: UpstreamServer, tmp_path: Path) -> Iterator[GatewayServer]:
    """A second gateway on the same database, as another replica."""
    server = GatewayServer(
        create_app(make_settings(database_url, tmp_path), routes_for(upstream.base_url))
    ).start()
    yield server
    server.stop()


def test_concurrent_duplicates_across_two_gateways_make_one_answer_and_one_record(
    gateway: GatewayServer,
    twin: GatewayServer,
    tenant: TenantKeys,
    sessions: sessionmaker[Session],
    upstream: UpstreamServer,
) -> None:
    for server in (gateway, twin):  # a route whose upstream takes 400 ms, on both replicas
        routes = server.app.state.pipeline.routes
        routes["slowish"] = routes["echo"].model_copy(
            update={"name": "slowish", "upstream_model": "slow-400"}
        )
    prompt = f"concurrent {uuid.uuid4().hex}"
    body = {"model": "slowish", "messages": [{"role": "user", "content": prompt}]}
    idem = str(uuid.uuid4())
    results: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send(server: GatewayServer) -> None:
        start.wait()
        resp = post(server, tenant.app, body, idem)
        with lock:
            results.append(resp)

    before = len(upstream.requests)
    threads = [threading.Thread(target=send, args=((gateway, twin)[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        codes = sorted(r.status_code for r in results)
        answered = [r for r in results if r.status_code == 200]
        busy = [r for r in results if r.status_code == 409]
        assert len(answered) + len(busy) == 8, codes
        assert {r.json()["error"]["code"] for r in busy} <= {"idempotency_key_in_use"}
        assert len({r.json()["provenance"]["audit_id"] for r in answered}) == 1
        assert len(upstream.requests) - before == 1
        assert records_for(sessions, tenant, prompt) == 1
        # once answered, every retry (on either replica) is the replay
        for server in (gateway, twin):
            again = post(server, tenant.app, body, idem)
            assert again.status_code == 200
            assert again.json()["provenance"] == answered[0].json()["provenance"]
    finally:
        for server in (gateway, twin):
            del server.app.state.pipeline.routes["slowish"]


def test_a_failed_answer_leaves_the_key_to_the_retry(
    gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session]
) -> None:
    routes = gateway.app.state.pipeline.routes
    routes["flaky"] = routes["echo"].model_copy(
        update={"name": "flaky", "upstream_model": "fail-503"}
    )
    try:
        prompt = f"flaky {uuid.uuid4().hex}"
        body = {"model": "flaky", "messages": [{"role": "user", "content": prompt}]}
        idem = str(uuid.uuid4())
        failed = post(gateway, tenant.app, body, idem)
        assert failed.status_code == 502
        routes["flaky"] = routes["flaky"].model_copy(update={"upstream_model": "echo-1"})
        retried = post(gateway, tenant.app, body, idem)
        assert retried.status_code == 200, retried.text
        assert "idempotent-replayed" not in retried.headers
        assert retried.json()["provenance"]["audit_id"] != failed.headers["x-provenant-audit-id"]
        assert records_for(sessions, tenant, prompt) == 2  # the failure stays on the record
        assert post(gateway, tenant.app, body, idem).json() == retried.json()
    finally:
        del routes["flaky"]


def test_erasure_and_expiry_remove_the_kept_answer(
    gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session]
) -> None:
    subject = f"user-{uuid.uuid4().hex[:8]}"
    body = {"model": "echo", "messages": MSG, "user": subject}
    idem = str(uuid.uuid4())
    first = post(gateway, tenant.app, body, idem)
    audit_id = first.json()["provenance"]["audit_id"]
    with sessions() as session:
        kept = session.get(IdempotentReplay, uuid.UUID(audit_id))
        assert kept is not None and kept.response is not None
    erased = httpx.post(
        f"{gateway.url}/v1/admin/erasure",
        json={"subject": subject, "reason": "data subject request"},
        headers={"Authorization": f"Bearer {tenant.admin}"},
        timeout=10,
    )
    assert erased.status_code == 200, erased.text
    with sessions() as session:
        kept = session.get(IdempotentReplay, uuid.UUID(audit_id))
        assert kept is not None and kept.response is None
    gone = post(gateway, tenant.app, body, idem)
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"]["code"] == "idempotency_replay_unavailable"
    assert audit_id in gone.json()["error"]["message"]
    assert gone.headers["x-provenant-audit-id"] == audit_id

    # once expired (retention purges it), the key is free: a new answer, a new record
    with sessions() as session, session.begin():
        assert purge_idempotency(session, now=utcnow() + timedelta(days=2)) >= 1
        assert session.get(IdempotentReplay, uuid.UUID(audit_id)) is None
        assert session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == idem)) is None
    fresh = post(gateway, tenant.app, body, idem)
    assert fresh.status_code == 200
    assert fresh.json()["provenance"]["audit_id"] != audit_id


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_sourced_routes_replay_the_answer_with_its_sources(
    rag_gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session], stream: bool
) -> None:
    resp = upload(
        rag_gateway.url,
        tenant.admin,
        "hr",
        "leave.pdf",
        pdf(["Birth parents receive sixteen weeks of parental leave at full pay."]),
    )
    assert resp.status_code in (200, 201), resp.text
    question = f"How many weeks of parental leave? ({uuid.uuid4().hex})"
    for route in ("hr-rag", "hr-assistant"):
        idem = str(uuid.uuid4())
        seen: list[tuple[str, dict[str, Any]]] = []
        with openai.OpenAI(
            base_url=f"{rag_gateway.url}/v1", api_key=tenant.app, max_retries=0, timeout=30
        ) as client:
            for _ in range(2):
                if stream:
                    chunks = list(
                        client.chat.completions.create(
                            model=route,
                            messages=[{"role": "user", "content": question}],
                            stream=True,
                            extra_headers={"Idempotency-Key": idem},
                        )
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    extra = chunks[-1].model_extra
                else:
                    answer = client.chat.completions.create(
                        model=route,
                        messages=[{"role": "user", "content": question}],
                        extra_headers={"Idempotency-Key": idem},
                    )
                    text, extra = answer.choices[0].message.content or "", answer.model_extra
                assert extra is not None
                seen.append((text, extra["provenance"]))
        assert seen[0] == seen[1], route
        assert seen[0][1]["sources"] and "[1]" in seen[0][0]
    assert records_for(sessions, tenant, question) == 2  # one per route, none for the retries
