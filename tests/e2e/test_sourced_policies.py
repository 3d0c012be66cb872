"""The policies that read an answer's sources, through the gateway on real RAG routes: an answer
without a citation is withheld (streamed too), an answer not grounded in what was retrieved is
flagged, and an answer citing a superseded document version is flagged as stale; each decision
is on the answer and on the record the auditor reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from service.app import create_app
from service.config import OpenAIRoute, RagRoute, RoutesFile
from tests.conftest import TenantKeys, make_settings, rag_routes
from tests.support.documents import upload
from tests.support.servers import REPLY_KEY, GatewayServer, UpstreamServer

LEAVE = "# Annual leave\n\nEmployees accrue {days} days of paid annual leave per year.\n"
QUESTION = "How many days of paid annual leave do employees accrue per year?"


def policy(pid: str, routes: list[str], check: dict[str, Any], action: str) -> dict[str, Any]:
    return {
        "id": pid,
        "description": f"{pid} on {', '.join(routes)}",
        "applies_to": {"routes": routes},
        "stage": "post",
        "check": check,
        "action": action,
        "frameworks": ["EU-AI-Act:Art13"],
    }


BUNDLE = {
    "bundle": "sourced-e2e",
    "policies": [
        policy("must-cite", ["hr-rag", "hr-echo"], {"type": "require_citations"}, "block"),
        policy("grounded", ["hr-assistant", "ungrounded"], {"type": "grounding"}, "flag"),
        policy("current-sources", ["external-rag"], {"type": "stale_sources"}, "flag"),
    ],
}


@pytest.fixture(scope="module")
def sourced(
    database_url: str,
    upstream: UpstreamServer,
    external_rag: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("sourced-policies")
    (data / "bundle.yaml").write_text(yaml.safe_dump(BUNDLE, sort_keys=False))
    settings = make_settings(
        database_url, data, seal_interval_s=0.2, policy_bundle=data / "bundle.yaml"
    )
    routes = rag_routes(upstream.base_url, external_rag.base_url).routes
    extra = [
        OpenAIRoute(name="echo", upstream=upstream.base_url, upstream_model="echo-1"),
        # a generator that repeats the question: no [n] marker, no sentence from the sources
        RagRoute(name="hr-echo", collection="hr", top_k=2, generator="echo"),
        RagRoute(name="ungrounded", collection="hr", top_k=2, generator="echo"),
    ]
    server = GatewayServer(create_app(settings, RoutesFile(routes=[*routes, *extra]))).start()
    yield server
    server.stop()


def sdk(gateway: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


def ingest(gateway: GatewayServer, key: str, days: int) -> dict[str, Any]:
    resp = upload(gateway.url, key, "hr", "leave.md", LEAVE.format(days=days).encode())
    assert resp.status_code in (200, 201), resp.text
    return resp.json()  # type: ignore[no-any-return]


def record(gateway: GatewayServer, key: str, audit_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{gateway.url}/v1/audit/records/{audit_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def ask(client: openai.OpenAI, model: str, content: str = QUESTION, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **extra
    )


def decided(rec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {d["policy_id"]: (d["outcome"], d["detail"]) for d in rec["policies"]}


def test_an_answer_without_a_citation_is_withheld_and_one_with_a_citation_delivered(
    sourced: GatewayServer, tenant: TenantKeys
) -> None:
    ingest(sourced, tenant.admin, 25)
    with sdk(sourced, tenant.app) as client:
        cited = ask(client, "hr-rag")
        prov = cited.model_extra["provenance"]
        assert {d["id"]: d["outcome"] for d in prov["policies"]} == {"must-cite": "pass"}

        with pytest.raises(openai.PermissionDeniedError) as exc:
            ask(client, "hr-echo")
        body = exc.value.body
        assert isinstance(body, dict) and body["code"] == "policy_blocked"
        assert "'must-cite'" in body["message"]

        # streamed: held back until the citations are known, then refused as a whole
        seen: list[str] = []
        with pytest.raises(openai.APIError) as streamed:
            for chunk in ask(client, "hr-echo", stream=True):
                seen.extend(c.delta.content or "" for c in chunk.choices)
        assert seen == [] or "Echo" not in "".join(seen)

    rec = record(sourced, tenant.auditor, prov["audit_id"])
    assert decided(rec)["must-cite"] == ("pass", {"cited": 1, "required": 1})
    for refused in (body, streamed.value.body):
        assert isinstance(refused, dict)
        rec = record(sourced, tenant.auditor, refused["provenance"]["audit_id"])
        assert rec["status"] == "policy_blocked" and rec["route_kind"] == "rag"
        outcome, detail = decided(rec)["must-cite"]
        assert outcome == "blocked" and (detail["cited"], detail["required"]) == (0, 1)
        # the sources the refused answer was given are kept with it
        assert [s["version"] for s in rec["sources"]] == [1]
        assert rec["answer"].startswith("Echo: ")


def test_an_answer_not_supported_by_the_retrieved_text_is_flagged(
    sourced: GatewayServer, tenant: TenantKeys
) -> None:
    ingest(sourced, tenant.admin, 25)
    with sdk(sourced, tenant.app) as client:
        quoted = ask(client, "hr-assistant")
        echoed = ask(client, "ungrounded", "What is the capital of Peru?")
    assert "25 days" in (quoted.choices[0].message.content or "")
    grounded = record(sourced, tenant.auditor, quoted.model_extra["provenance"]["audit_id"])
    outcome, detail = decided(grounded)["grounded"]
    assert outcome == "pass" and detail["share"] == 1.0

    # delivered (flag, not block), with the decision on the answer and the record
    assert echoed.choices[0].message.content == "Echo: What is the capital of Peru?"
    shown = {d["id"]: d for d in echoed.model_extra["provenance"]["policies"]}
    assert shown["grounded"]["outcome"] == "flagged"
    rec = record(sourced, tenant.auditor, echoed.model_extra["provenance"]["audit_id"])
    outcome, detail = decided(rec)["grounded"]
    assert outcome == "flagged" and detail["supported"] == 0 and detail["share"] == 0.0
    assert rec["status"] == "ok"


def test_an_answer_citing_a_superseded_version_is_flagged_stale(
    sourced: GatewayServer, external_rag: UpstreamServer, tenant: TenantKeys
) -> None:
    ingest(sourced, tenant.admin, 25)
    with sdk(sourced, tenant.app) as client:
        v1 = ask(client, "hr-assistant")
        old_chunk = v1.model_extra["provenance"]["sources"][0]["chunk_id"]
        reply = external_rag.app[REPLY_KEY]

        reply.update(answer="Employees accrue 25 days [1].", sources=[{"chunk_id": old_chunk}])
        current = ask(client, "external-rag")
        assert ingest(sourced, tenant.admin, 28)["status"] == "new_version"
        stale = ask(client, "external-rag")

    earlier = record(sourced, tenant.auditor, current.model_extra["provenance"]["audit_id"])
    assert decided(earlier)["current-sources"] == ("pass", None)
    prov = stale.model_extra["provenance"]
    [source] = prov["sources"]
    assert (source["version"], source["superseded"], source["verified"]) == (1, True, True)
    assert {d["id"]: d["outcome"] for d in prov["policies"]} == {"current-sources": "flagged"}
    rec = record(sourced, tenant.auditor, prov["audit_id"])
    outcome, detail = decided(rec)["current-sources"]
    assert outcome == "flagged" and detail["stale_refs"] == [1]
    assert [s["current_at_answer_time"] for s in rec["sources"]] == [False]
