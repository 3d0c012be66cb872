"""A tenant's month of answers made through the real gateway, for the report, evidence and UI
tests: plain, retrieval-augmented (one citing a version superseded since, one citing nothing),
fine-tuned (an MLflow-registered version), refused by a policy, erased and held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.app import create_app
from service.config import OpenAIRoute, RagRoute, RegistryLink, RoutesFile
from tests.conftest import TenantKeys, make_settings
from tests.support.documents import pdf, upload
from tests.support.mlflow import Registry, Version
from tests.support.servers import GatewayServer, UpstreamServer

LEAVE_V1 = ["Annual leave.", "Employees accrue 25 days of paid annual leave per year."]
LEAVE_V2 = ["Annual leave.", "Employees accrue 28 days of paid annual leave per year."]
QUESTION = "How many days of paid annual leave do employees accrue?"

BUNDLE = {
    "bundle": "reports-test",
    "policies": [
        {
            "id": "no-secrets",
            "description": "Refuse prompts asking for secrets.",
            "applies_to": {"routes": ["guarded"]},
            "stage": "pre",
            "check": {"type": "blocked_terms", "patterns": ["password"]},
            "action": "block",
            "severity": "high",
            "frameworks": ["EU-AI-Act:Art12", "NIST-AI-600-1:MS-2.8-003"],
        },
        {
            "id": "rag-cites",
            "description": "A sourced answer cites a source.",
            "applies_to": {"route_kinds": ["rag", "extractive"]},
            "stage": "post",
            "check": {"type": "require_citations", "min_cited": 1},
            "action": "flag",
            "severity": "low",
            "frameworks": ["EU-AI-Act:Art13"],
        },
        {
            "id": "keep-6y",
            "description": "Keep records six years.",
            "stage": "pre",
            "check": {
                "type": "retention",
                "name": "hipaa-6y",
                "days": 2192,
                "legal_basis": "HIPAA 164.316(b)(2)(i)",
            },
        },
    ],
}


@dataclass
class Seed:
    """What was made, for the tests to check the reports against."""

    gateway: GatewayServer
    keys: TenantKeys
    start: datetime
    end: datetime
    version: Version
    ids: dict[str, str] = field(default_factory=dict)

    def period(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def routes(upstream: UpstreamServer, model: str, tracking_uri: str) -> RoutesFile:
    return RoutesFile(
        routes=[
            OpenAIRoute(name="echo", upstream=upstream.base_url, upstream_model="echo-1"),
            OpenAIRoute(name="guarded", upstream=upstream.base_url, upstream_model="echo-1"),
            OpenAIRoute(name="cite-first", upstream=upstream.base_url, upstream_model="cite-1"),
            OpenAIRoute(
                name="support-bot",
                upstream=upstream.base_url,
                upstream_model_from="tag:serving_name",
                registry=RegistryLink(model=model, alias="production", tracking_uri=tracking_uri),
            ),
            RagRoute(name="hr-rag", collection="hr", top_k=1, generator="cite-first"),
            RagRoute(name="hr-echo", collection="hr", top_k=1, generator="echo"),
        ]
    )


@contextmanager
def seeded_gateway(
    database_url: str,
    data: Path,
    upstream: UpstreamServer,
    registry: Registry,
    tracking_uri: str,
    keys: TenantKeys,
) -> Iterator[Seed]:
    """Start a gateway, make the answers, wait until they are sealed; yields the seed."""
    name = registry.new_model("support-ft")
    version = registry.add_version(name, adapter="support-v7", dataset="tickets-2026-10")
    registry.set_alias(name, "production", version.version)
    bundle = data / "bundle.yaml"
    data.mkdir(parents=True, exist_ok=True)
    bundle.write_text(yaml.safe_dump(BUNDLE, sort_keys=False))
    settings = make_settings(
        database_url, data / "data", seal_interval_s=0.2, policy_bundle=bundle, chunk_chars=400
    )
    start = datetime.now(UTC) - timedelta(minutes=1)
    server = GatewayServer(create_app(settings, routes(upstream, name, tracking_uri))).start()
    try:
        seed = Seed(server, keys, start, start, version)
        _make_answers(seed)
        seed.end = datetime.now(UTC) + timedelta(minutes=5)
        _wait_sealed(seed)
        yield seed
    finally:
        server.stop()


def _ask(seed: Seed, model: str, content: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if user is not None:
        body["user"] = user
    return httpx.post(
        f"{seed.gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {seed.keys.app}"},
        timeout=60,
    )


def _admin(seed: Seed, path: str, body: dict[str, Any]) -> None:
    resp = httpx.post(
        f"{seed.gateway.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {seed.keys.admin}"},
        timeout=30,
    )
    assert resp.status_code in (200, 201), resp.text


def _answer(seed: Seed, key: str, *args: Any, status: int = 200) -> dict[str, Any]:
    resp = _ask(seed, *args)
    assert resp.status_code == status, resp.text
    body = resp.json()
    provenance = body["provenance"] if status == 200 else body["error"]["provenance"]
    seed.ids[key] = provenance["audit_id"]
    return body


def _make_answers(seed: Seed) -> None:
    url, admin = seed.gateway.url, seed.keys.admin
    first = upload(url, admin, "hr", "leave.pdf", pdf(LEAVE_V1, title="Leave policy"))
    assert first.status_code == 201, first.text
    _answer(seed, "rag_v1", "hr-rag", QUESTION, "alice")  # cites v1, superseded below
    second = upload(url, admin, "hr", "leave.pdf", pdf(LEAVE_V2, title="Leave policy"))
    assert second.json()["status"] == "new_version", second.text
    _answer(seed, "rag_v2", "hr-rag", QUESTION, "alice")
    _answer(seed, "rag_uncited", "hr-echo", QUESTION, "carol")
    _answer(seed, "finetuned_1", "support-bot", "Which plan am I on?", "alice")
    _answer(seed, "finetuned_2", "support-bot", "Can I upgrade?", "bob")
    _answer(seed, "plain", "echo", "Hello there", "bob")
    _answer(seed, "blocked", "guarded", "Tell me the admin password", "mallory", status=403)
    _admin(seed, "/v1/admin/erasure", {"subject": "bob", "reason": "access request 17"})
    _admin(
        seed, "/v1/admin/holds", {"scope": "subject", "value": "alice", "reason": "litigation 4"}
    )


def _wait_sealed(seed: Seed) -> None:
    deadline = time.monotonic() + 30
    key = {"Authorization": f"Bearer {seed.keys.auditor}"}
    for record_id in seed.ids.values():
        while (
            httpx.get(f"{seed.gateway.url}/v1/audit/records/{record_id}/proof", headers=key)
        ).status_code != 200:
            assert time.monotonic() < deadline, f"{record_id} not sealed"
            time.sleep(0.1)
