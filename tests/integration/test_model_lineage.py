"""Fine-tuned model lineage: every answer pinned to the MLflow version, run and datasets that
served it, against a real ``mlflow server`` on loopback and the official openai SDK."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from service.app import create_app
from service.config import OpenAIRoute, RagRoute, RegistryLink, Route, RoutesFile
from service.db.engine import make_engine
from service.integrity import leaf
from service.integrity.canonical import digest
from service.lineage.models import AdminEvent, AuditRecord, PolicyDecision
from service.provenance.models import ModelSnapshot
from tests.conftest import TenantKeys, make_settings, new_tenant
from tests.support.documents import upload
from tests.support.mlflow import MlflowServer, Registry, Version
from tests.support.servers import GatewayServer, TcpRelay, UpstreamServer

MESSAGES = [{"role": "user", "content": "Which plan am I on?"}]


@contextmanager
def lineage_gateway(
    database_url: str, tmp_path: Path, routes: list[Route], **settings: Any
) -> Iterator[GatewayServer]:
    app = create_app(
        make_settings(database_url, tmp_path / "data", seal_interval_s=0.2, **settings),
        RoutesFile(routes=routes),
    )
    server = GatewayServer(app).start()
    try:
        yield server
    finally:
        server.stop()


def linked_route(
    name: str, upstream: UpstreamServer, tracking_uri: str, model: str, **link: Any
) -> OpenAIRoute:
    return OpenAIRoute(
        name=name,
        upstream=upstream.base_url,
        upstream_model_from="tag:serving_name",
        registry=RegistryLink(model=model, alias="production", tracking_uri=tracking_uri, **link),
    )


def ask(gateway: GatewayServer, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def get(gateway: GatewayServer, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}
    )


def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def assert_pinned(model: dict[str, Any], v: Version, tracking_uri: str) -> None:
    assert model["registry"] == "mlflow"
    assert model["tracking_uri"] == tracking_uri
    assert (model["name"], model["version"], model["alias"]) == (v.name, v.version, "production")
    assert model["run_id"] == v.run_id
    assert model["source"] == f"runs:/{v.run_id}/adapter"
    assert model["base_model"] == "llama-3-8b"
    assert model["adapter"] == v.adapter
    assert model["datasets"] == [
        {"name": v.dataset, "digest": v.digest, "source": f"s3://datasets/{v.dataset}.parquet"}
    ]


def test_answers_follow_the_alias_to_the_version_run_and_dataset_that_served_them(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tenant: TenantKeys,
) -> None:
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="support-v1", dataset="tickets-2026-09")
    v2 = registry.add_version(name, adapter="support-v2", dataset="tickets-2026-10")
    registry.set_alias(name, "production", v1.version)
    # credentials in the tracking URI are used, and never shown or stored
    secret_uri = f"http://svc:hunter2@127.0.0.1:{mlflow_server.port}"
    route = linked_route("support-bot", upstream, secret_uri, name, cache_ttl_s=0.5)

    with (
        lineage_gateway(database_url, tmp_path, [route]) as gateway,
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client,
    ):
        first = client.chat.completions.create(model="support-bot", messages=MESSAGES)
        assert upstream.requests[-1]["body"]["model"] == "support-v1"
        model = first.model_extra["provenance"]["model"]
        assert_pinned(model, v1, mlflow_server.url)
        assert model["lineage_stale"] is False
        assert model["upstream"] == "support-v1"

        listing = get(gateway, tenant.app, "/v1/models")
        listed = listing.json()["data"]
        (entry,) = [m for m in listed if m["id"] == "support-bot"]
        assert entry["provenant"]["registry"]["version"] == v1.version
        assert entry["provenant"]["registry"]["state"] == "ok"

        registry.set_alias(name, "production", v2.version)

        def moved() -> Any:
            answer = client.chat.completions.create(model="support-bot", messages=MESSAGES)
            model = answer.model_extra["provenance"]["model"]
            return answer if model["version"] == v2.version else None

        second = until(moved, what="the alias move reached the gateway")
        assert upstream.requests[-1]["body"]["model"] == "support-v2"
        assert_pinned(second.model_extra["provenance"]["model"], v2, mlflow_server.url)

        chunks = list(
            client.chat.completions.create(model="support-bot", messages=MESSAGES, stream=True)
        )
        assert upstream.requests[-1]["body"]["model"] == "support-v2"
        streamed = chunks[-1].model_extra["provenance"]
        assert_pinned(streamed["model"], v2, mlflow_server.url)

        records = {
            key: get(gateway, tenant.auditor, f"/v1/audit/records/{audit_id}").json()
            for key, audit_id in (
                ("first", first.model_extra["provenance"]["audit_id"]),
                ("second", second.model_extra["provenance"]["audit_id"]),
                ("streamed", streamed["audit_id"]),
            )
        }
        shown = [
            first.model_dump_json(),
            listing.text,
            httpx.get(f"{gateway.url}/readyz").text,
            get(gateway, tenant.auditor, "/v1/lineage/models").text,
            str(records),
            str(snapshot_rows(database_url, name)),
        ]
    assert not [s for s in shown if "hunter2" in s]
    assert records["first"]["upstream_model"] == "support-v1"
    assert_pinned(records["first"]["model"], v1, mlflow_server.url)
    assert records["first"]["lineage_stale"] is False
    for key in ("second", "streamed"):
        assert records[key]["upstream_model"] == "support-v2"
        assert_pinned(records[key]["model"], v2, mlflow_server.url)
    assert records["first"]["model_snapshot_id"] != records["second"]["model_snapshot_id"]
    assert records["second"]["model_snapshot_id"] == records["streamed"]["model_snapshot_id"]


def test_a_rag_answer_from_a_fine_tuned_generator_records_its_sources_and_its_model_version(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tenant: TenantKeys,
) -> None:
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="handbook-v1", dataset="handbook-qa-2026-10")
    registry.set_alias(name, "production", v1.version)
    generator = linked_route("handbook-bot", upstream, mlflow_server.url, name)
    rag = RagRoute(name="handbook-rag", collection="hr", top_k=2, generator="handbook-bot")
    handbook = b"# Leave\n\nEmployees accrue 25 days of paid annual leave per year.\n"
    question = [{"role": "user", "content": "How many days of annual leave do employees get?"}]

    with (
        lineage_gateway(database_url, tmp_path, [generator, rag]) as gateway,
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client,
    ):
        uploaded = upload(gateway.url, tenant.admin, "hr", "leave.md", handbook)
        assert uploaded.status_code == 201, uploaded.text
        answer = client.chat.completions.create(model="handbook-rag", messages=question)
        sent = upstream.requests[-1]["body"]
        prov = answer.model_extra["provenance"]
        rec = get(gateway, tenant.auditor, f"/v1/audit/records/{prov['audit_id']}").json()

    # the upstream was asked for the version's adapter, with the numbered sources
    assert sent["model"] == "handbook-v1"
    assert "[1] Leave (version 1)" in sent["messages"][0]["content"]
    # the answer and its record name both what it came from: the source and the model version
    assert [(s["title"], s["version"]) for s in prov["sources"]] == [("Leave", 1)]
    assert_pinned(prov["model"], v1, mlflow_server.url)
    assert rec["route_kind"] == "rag" and rec["upstream_model"] == "handbook-v1"
    assert [s["version"] for s in rec["sources"]] == [1]
    assert_pinned(rec["model"], v1, mlflow_server.url)
    assert rec["model_snapshot_id"] is not None


def test_registry_outage_serves_the_last_snapshot_flagged_stale_then_fails_closed(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tenant: TenantKeys,
) -> None:
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="outage-v1", dataset="tickets-2026-09")
    registry.set_alias(name, "production", v1.version)
    relay = TcpRelay("127.0.0.1", mlflow_server.port)
    relayed = f"http://127.0.0.1:{relay.port}"
    strict = linked_route("strict", upstream, relayed, name, max_staleness_s=3.0)
    lenient = linked_route(
        "lenient", upstream, relayed, name, max_staleness_s=3.0, beyond_max_staleness="serve_stale"
    )
    try:
        with lineage_gateway(
            database_url, tmp_path, [strict, lenient], model_cache_ttl_s=0.3
        ) as gateway:
            fresh = ask(gateway, tenant.app, "strict")
            assert fresh.status_code == 200, fresh.text
            assert fresh.json()["provenance"]["model"]["lineage_stale"] is False

            relay.cut()  # MLflow is gone, as a stopped server looks to its clients
            stale = until(
                lambda: (
                    (r := ask(gateway, tenant.app, "strict")).json()["provenance"]["model"][
                        "lineage_stale"
                    ]
                    and r
                ),
                what="answers flagged stale",
            )
            assert stale.status_code == 200
            assert_pinned(stale.json()["provenance"]["model"], v1, relayed)
            assert upstream.requests[-1]["body"]["model"] == "outage-v1"
            record = get(
                gateway,
                tenant.auditor,
                f"/v1/audit/records/{stale.headers['x-provenant-audit-id']}",
            ).json()
            assert record["lineage_stale"] is True
            assert record["model"]["version"] == v1.version
            assert leaf_recomputes(database_url, stale.headers["x-provenant-audit-id"])
            ready = httpx.get(f"{gateway.url}/readyz").json()
            assert ready["status"] == "ready"
            assert ready["checks"]["model_registries"][0]["uri"] == relayed

            refused = until(
                lambda: (r := ask(gateway, tenant.app, "strict")).status_code == 503 and r,
                timeout=15,
                what="503 beyond max staleness",
            )
            error = refused.json()["error"]
            assert error["code"] == "lineage_unavailable"
            assert "max staleness" in error["message"]
            refusal = get(
                gateway,
                tenant.auditor,
                f"/v1/audit/records/{refused.headers['x-provenant-audit-id']}",
            ).json()
            assert refusal["status"] == "lineage_unavailable"
            assert refusal["http_status"] == 503

            relaxed = ask(gateway, tenant.app, "lenient")
            assert relaxed.status_code == 200, relaxed.text
            assert relaxed.json()["provenance"]["model"]["lineage_stale"] is True

            relay.restore()
            back = until(
                lambda: (
                    (r := ask(gateway, tenant.app, "strict")).status_code == 200
                    and not r.json()["provenance"]["model"]["lineage_stale"]
                    and r
                ),
                what="fresh answers once the registry is back",
            )
            assert back.json()["provenance"]["model"]["version"] == v1.version
    finally:
        relay.close()


def leaf_recomputes(database_url: str, audit_id: str) -> bool:
    """The record's stored leaf equals the leaf rebuilt from its row and its snapshot's content
    (what ``provenant verify`` does for every record)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = (
                conn.execute(
                    select(AuditRecord.__table__).where(AuditRecord.id == uuid.UUID(audit_id))
                )
                .mappings()
                .one()
            )
            content = conn.execute(
                select(ModelSnapshot.content).where(ModelSnapshot.id == row["model_snapshot_id"])
            ).scalar_one()
            decisions = (
                conn.execute(
                    select(PolicyDecision.__table__).where(
                        PolicyDecision.record_id == uuid.UUID(audit_id)
                    )
                )
                .mappings()
                .all()
            )
    finally:
        engine.dispose()
    doc = leaf.record_document(row, decisions=decisions, snapshot_sha256=digest(content))
    return bool(leaf.leaf_sha256(doc) == row["leaf_sha256"])


def snapshot_rows(database_url: str, name: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ModelSnapshot.__table__).where(ModelSnapshot.name == name)
            ).mappings()
            return sorted((dict(r) for r in rows), key=lambda r: r["resolved_at"])
    finally:
        engine.dispose()


def test_snapshots_are_stored_once_and_never_change_whatever_happens_in_mlflow(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tenant: TenantKeys,
) -> None:
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="keep-v1", dataset="tickets-2026-09")
    registry.set_alias(name, "production", v1.version)
    route = linked_route("keep", upstream, mlflow_server.url, name, cache_ttl_s=0.2)

    with lineage_gateway(database_url, tmp_path, [route]) as gateway:
        first = ask(gateway, tenant.app, "keep")
        for _ in range(5):  # refreshes in between: the same content is the same row
            time.sleep(0.1)
            assert ask(gateway, tenant.app, "keep").status_code == 200
        (before,) = snapshot_rows(database_url, name)
        assert before["snapshot_sha256"] == digest(before["content"])

        registry.client.set_model_version_tag(name, v1.version, "validation_status", "approved")
        tagged = until(
            lambda: (
                (r := ask(gateway, tenant.app, "keep")).json()["provenance"]["model"][
                    "validation_status"
                ]
                == "approved"
                and r
            ),
            what="the new tag reached the gateway",
        )
        assert tagged.json()["provenance"]["model"]["snapshot_id"] != str(before["id"])

        registry.client.delete_model_version(name, v1.version)
        audit_id = first.headers["x-provenant-audit-id"]
        record = get(gateway, tenant.auditor, f"/v1/audit/records/{audit_id}").json()

    assert_pinned(record["model"], v1, mlflow_server.url)
    assert record["model"]["validation_status"] is None
    assert record["model_snapshot_id"] == str(before["id"])
    assert leaf_recomputes(database_url, audit_id)
    old, new = snapshot_rows(database_url, name)
    assert old == before  # untouched by the tag, by the deletion, by every refresh
    assert new["content"]["validation_status"] == "approved"
    assert new["content"]["version"] == v1.version

    if make_engine(database_url).dialect.name == "postgresql":
        engine = make_engine(database_url)
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(
                text("UPDATE model_snapshots SET alias = 'x' WHERE id = :id"), {"id": before["id"]}
            )
        engine.dispose()


def test_auditors_see_only_their_tenants_use_of_each_model(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    sessions: Any,
) -> None:
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="iso-v1", dataset="tickets-2026-09")
    registry.set_alias(name, "production", v1.version)
    shared = registry.new_model()
    registry.set_alias(
        shared,
        "production",
        registry.add_version(shared, adapter="iso-s", dataset="tickets-x").version,
    )
    ours, theirs = new_tenant(sessions), new_tenant(sessions)
    routes = [
        linked_route("ours-only", upstream, mlflow_server.url, name),
        linked_route("shared", upstream, mlflow_server.url, shared),
    ]
    with lineage_gateway(database_url, tmp_path, routes) as gateway:
        ids = [ask(gateway, ours.app, "ours-only").headers["x-provenant-audit-id"] for _ in "abc"]
        ask(gateway, ours.app, "shared")
        for _ in range(4):
            assert ask(gateway, theirs.app, "shared").status_code == 200

        mine = get(gateway, ours.auditor, "/v1/lineage/models").json()["data"]
        by_name = {m["name"]: m for m in mine}
        assert (by_name[name]["records"], by_name[name]["answers"]) == (3, 3)
        assert by_name[name]["stale_records"] == 0
        assert by_name[name]["lineage"]["datasets"][0]["digest"] == v1.digest
        assert by_name[shared]["answers"] == 1  # the other tenant's 4 answers are not counted
        assert by_name[name]["first_used_at"] <= by_name[name]["last_used_at"]
        snapshot_id = by_name[name]["id"]

        answers = get(gateway, ours.auditor, f"/v1/lineage/models/{snapshot_id}/answers").json()
        assert [r["id"] for r in answers["data"]] == ids[::-1]
        assert all(r["model_snapshot_id"] == snapshot_id for r in answers["data"])
        page = get(gateway, ours.auditor, f"/v1/lineage/models/{snapshot_id}/answers", limit=2)
        assert page.json()["has_more"] is True
        # reading the log is itself on the record, with the filter the auditor used
        engine = make_engine(database_url)
        with engine.connect() as conn:
            listed = conn.scalars(
                select(AdminEvent.detail).where(
                    AdminEvent.action == "records.listed", AdminEvent.actor.like("key:%")
                )
            ).all()
        engine.dispose()
        assert any(d["filters"]["model_snapshot_id"] == snapshot_id for d in listed)

        full = get(gateway, ours.admin, f"/v1/lineage/models/{snapshot_id}").json()
        assert full["content"]["run"]["params"] == {"base_model": "llama-3-8b", "lora_rank": "16"}
        assert full["content"]["datasets"][0]["context"] == "training"

        theirs_list = get(gateway, theirs.auditor, "/v1/lineage/models").json()["data"]
        assert [m["name"] for m in theirs_list] == [shared]
        assert theirs_list[0]["answers"] == 4
        for path in (
            f"/v1/lineage/models/{snapshot_id}",
            f"/v1/lineage/models/{snapshot_id}/answers",
        ):
            refused = get(gateway, theirs.auditor, path)
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "not_found"
        forbidden = get(gateway, ours.app, "/v1/lineage/models")
        assert forbidden.status_code == 403


def test_approved_model_policy_reads_the_alias_and_tags_the_registry_gave(
    database_url: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    mlflow_server: MlflowServer,
    registry: Registry,
    tenant: TenantKeys,
) -> None:
    """Governance on fine-tuned lineage: a route may serve only a version the registry marks
    approved (tag validated=true); an unvalidated version behind the same alias is refused
    before the upstream is called, and the decision names the version."""
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="support-v1", dataset="tickets-a")
    registry.client.set_model_version_tag(name, v1.version, "validated", "true")
    v2 = registry.add_version(name, adapter="support-v2", dataset="tickets-b")
    registry.set_alias(name, "production", v1.version)
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(
        "bundle: approvals\npolicies:\n  - id: validated-only\n    description: validated\n"
        "    stage: pre\n    check: {type: approved_model, tags: {validated: 'true'}}\n"
        "    action: block\n    severity: critical\n"
    )
    route = linked_route("governed", upstream, mlflow_server.url, name)
    with lineage_gateway(
        database_url, tmp_path, [route], model_cache_ttl_s=0.2, policy_bundle=bundle
    ) as gateway:
        ok = ask(gateway, tenant.app, "governed")
        assert ok.status_code == 200, ok.text
        shown = {d["id"]: d for d in ok.json()["provenance"]["policies"]}
        assert shown["validated-only"]["outcome"] == "pass"
        assert shown["validated-only"]["detail"]["version"] == v1.version
        registry.set_alias(name, "production", v2.version)  # not validated
        refused = until(
            lambda: (r := ask(gateway, tenant.app, "governed")).status_code == 403 and r,
            what="the alias move reaching the policy",
        )
        assert refused.json()["error"]["code"] == "policy_blocked"
        assert "'validated-only'" in refused.json()["error"]["message"]
        record = get(
            gateway, tenant.auditor, f"/v1/audit/records/{refused.headers['X-Provenant-Audit-Id']}"
        ).json()
        assert record["status"] == "policy_blocked"
        assert record["model"]["version"] == v2.version
        assert {d["policy_id"]: d["outcome"] for d in record["policies"]} == {
            "validated-only": "blocked"
        }
        # refused before the upstream is called
        before = len(upstream.requests)
        assert ask(gateway, tenant.app, "governed").status_code == 403
        assert len(upstream.requests) == before
