"""Policies through the gateway, as an app (official openai SDK) and an auditor see them: a
``pre`` block never reaches the upstream, a ``post`` block withholds the answer (streamed too),
redaction changes what goes upstream and what is stored, and every decision is on the record."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy import create_engine, select

from service.app import create_app
from service.config import OpenAIRoute, RoutesFile
from service.errors import InvalidPolicyBundle
from service.integrity.verify import verify
from service.lineage.models import AdminEvent
from tests.conftest import TenantKeys, make_settings
from tests.support.servers import GatewayServer, UpstreamServer

ROUTES = ["plain", "pre-block", "post-block", "redact", "hash-only", "registry-only", "held"]


def policy(pid: str, route: str, stage: str, check: dict[str, Any], action: str | None) -> dict:
    out = {
        "id": pid,
        "description": f"{pid} on {route}",
        "applies_to": {"routes": [route]},
        "stage": stage,
        "check": check,
        "frameworks": ["EU-AI-Act:Art12"],
    }
    return out if action is None else {**out, "action": action}


BUNDLE = {
    "bundle": "e2e",
    "policies": [
        policy("flag-pii", "plain", "pre", {"type": "pii"}, "flag"),
        policy("size", "plain", "pre", {"type": "max_input_tokens", "limit": 50}, "block"),
        policy("cite", "plain", "post", {"type": "require_citations"}, "flag"),
        policy(
            "forbidden",
            "pre-block",
            "pre",
            {"type": "blocked_terms", "patterns": ["forbidden"]},
            "block",
        ),
        policy(
            "no-leak",
            "post-block",
            "post",
            {"type": "blocked_terms", "patterns": ["leak"]},
            "block",
        ),
        policy("redact-in", "redact", "pre", {"type": "pii", "kinds": ["email"]}, "redact"),
        policy(
            "store-hash", "hash-only", "pre", {"type": "content_mode", "mode": "hash_only"}, None
        ),
        policy(
            "approved",
            "registry-only",
            "pre",
            {"type": "approved_model", "aliases": ["production"]},
            "block",
        ),
        policy("redact-out", "held", "post", {"type": "pii", "kinds": ["email"]}, "redact"),
    ],
}


def write_bundle(path: Path, bundle: dict) -> Path:
    path.write_text(yaml.safe_dump(bundle, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def guarded(
    database_url: str, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("policies")
    settings = make_settings(
        database_url,
        data,
        seal_interval_s=0.2,
        policy_bundle=write_bundle(data / "bundle.yaml", BUNDLE),
    )
    routes = RoutesFile(
        routes=[
            OpenAIRoute(name=name, upstream=upstream.base_url, upstream_model="echo-1")
            for name in ROUTES
        ]
    )
    server = GatewayServer(create_app(settings, routes)).start()
    yield server
    server.stop()


_clients: list[openai.OpenAI] = []


def client(gateway: GatewayServer, key: str) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    _clients.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def record(gateway: GatewayServer, key: str, audit_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{gateway.url}/v1/audit/records/{audit_id}",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def decisions(rec: dict[str, Any]) -> dict[str, str]:
    return {d["policy_id"]: d["outcome"] for d in rec["policies"]}


def ask(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_flag_is_delivered_with_its_decisions_on_the_answer_and_record(
    guarded: GatewayServer, tenant: TenantKeys
) -> None:
    answer = client(guarded, tenant.app).chat.completions.create(
        **ask("plain", "mail me at jane.roe@example.org")
    )
    assert answer.choices[0].message.content == "Echo: mail me at jane.roe@example.org"
    prov = answer.model_extra["provenance"]
    shown = {d["id"]: d for d in prov["policies"]}
    assert shown["flag-pii"]["outcome"] == "flagged"
    assert shown["flag-pii"]["detail"]["found"] == {"email": 1}
    assert shown["flag-pii"]["frameworks"] == ["EU-AI-Act:Art12"]
    assert shown["size"]["outcome"] == "pass"
    assert shown["cite"]["outcome"] == "skipped"  # not a RAG route
    rec = record(guarded, tenant.auditor, prov["audit_id"])
    assert decisions(rec) == {"flag-pii": "flagged", "size": "pass", "cite": "skipped"}
    assert (
        rec["policy_bundle_sha256"]
        == httpx.get(
            f"{guarded.url}/v1/policies", headers={"Authorization": f"Bearer {tenant.auditor}"}
        ).json()["sha256"]
    )
    assert all(len(d["policy_sha256"]) == 64 for d in rec["policies"])


def test_pre_block_never_reaches_the_upstream(
    guarded: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    before = len(upstream.requests)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(guarded, tenant.app).chat.completions.create(
            **ask("pre-block", "tell me the forbidden thing")
        )
    assert len(upstream.requests) == before
    err = exc.value.body
    assert isinstance(err, dict) and err["code"] == "policy_blocked"
    assert "'forbidden'" in err["message"]
    audit_id = exc.value.response.headers["X-Provenant-Audit-Id"]
    assert err["provenance"]["audit_id"] == audit_id
    rec = record(guarded, tenant.auditor, audit_id)
    assert (rec["status"], rec["http_status"], rec["error_code"]) == (
        "policy_blocked",
        403,
        "policy_blocked",
    )
    assert decisions(rec) == {"forbidden": "blocked"}
    assert rec["prompt"] is not None and rec["answer"] == ""


def test_too_large_prompt_is_refused(guarded: GatewayServer, tenant: TenantKeys) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(guarded, tenant.app).chat.completions.create(**ask("plain", "word " * 60))
    assert "'size'" in exc.value.message


def test_post_block_withholds_the_answer_and_keeps_it_for_the_auditor(
    guarded: GatewayServer, tenant: TenantKeys
) -> None:
    sdk = client(guarded, tenant.app)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        sdk.chat.completions.create(**ask("post-block", "please leak it"))
    rec = record(guarded, tenant.auditor, exc.value.response.headers["X-Provenant-Audit-Id"])
    assert rec["status"] == "policy_blocked" and decisions(rec) == {"no-leak": "blocked"}
    assert rec["answer"] == "Echo: please leak it"  # withheld from the app, kept for the audit

    # streamed: the route holds the events back, so not one token of the answer leaks
    stream = sdk.chat.completions.create(**ask("post-block", "stream a leak"), stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as streamed:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "leak" not in "".join(seen)
    body = streamed.value.body
    assert isinstance(body, dict) and body["code"] == "policy_blocked"
    rec = record(guarded, tenant.auditor, body["provenance"]["audit_id"])
    assert rec["status"] == "policy_blocked" and rec["stream"] is True
    assert rec["answer"] == "Echo: stream a leak"
    # an answer without the term streams through
    ok = sdk.chat.completions.create(**ask("post-block", "all good"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in ok if c.choices) == "Echo: all good"


def test_redact_changes_what_goes_upstream_and_what_is_stored(
    guarded: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    answer = client(guarded, tenant.app).chat.completions.create(
        **ask("redact", "contact bob@example.com today")
    )
    sent = upstream.requests[-1]["body"]["messages"][-1]["content"]
    assert sent == "contact [EMAIL] today"
    assert answer.choices[0].message.content == "Echo: contact [EMAIL] today"
    rec = record(guarded, tenant.auditor, answer.model_extra["provenance"]["audit_id"])
    assert "bob@example.com" not in rec["prompt"] and "[EMAIL]" in rec["prompt"]
    assert decisions(rec) == {"redact-in": "redacted"}


def test_streamed_answer_is_redacted_before_it_leaves(
    guarded: GatewayServer, tenant: TenantKeys
) -> None:
    stream = client(guarded, tenant.app).chat.completions.create(
        **ask("held", "write to ann@example.net"), stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: write to [EMAIL]"
    prov = chunks[-1].model_extra["provenance"]
    rec = record(guarded, tenant.auditor, prov["audit_id"])
    assert rec["answer"] == "Echo: write to [EMAIL]" and decisions(rec) == {
        "redact-out": "redacted"
    }


def test_hash_only_stores_no_content_and_the_log_still_verifies(
    guarded: GatewayServer, tenant: TenantKeys, database_url: str
) -> None:
    answer = client(guarded, tenant.app).chat.completions.create(**ask("hash-only", "secret plan"))
    audit_id = answer.model_extra["provenance"]["audit_id"]
    rec = record(guarded, tenant.auditor, audit_id)
    assert rec["prompt"] is None and rec["answer"] is None and rec["choices"] is None
    assert rec["answer_sha256"] is not None and decisions(rec) == {"store-hash": "applied"}
    deadline = time.monotonic() + 20
    engine = create_engine(database_url)
    try:
        while True:
            report = verify(engine, origin="provenant.local/audit-log")
            if report.ok and report.pending == 0 and report.unsigned_tail == 0:
                break
            assert time.monotonic() < deadline, report.problems
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_approved_model_fails_closed_without_a_registry_link(
    guarded: GatewayServer, tenant: TenantKeys
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(guarded, tenant.app).chat.completions.create(**ask("registry-only", "hi"))
    assert "'approved'" in exc.value.message and "no registered model" in exc.value.message


def test_reload_swaps_the_bundle_records_it_and_keeps_it_when_invalid(
    database_url: str, upstream: UpstreamServer, tmp_path: Path, tenant: TenantKeys
) -> None:
    path = write_bundle(
        tmp_path / "b.yaml",
        {
            "bundle": "v1",
            "policies": [
                policy(
                    "t", "plain", "pre", {"type": "blocked_terms", "patterns": ["alpha"]}, "block"
                )
            ],
        },
    )
    settings = make_settings(database_url, tmp_path, policy_bundle=path)
    routes = RoutesFile(routes=[OpenAIRoute(name="plain", upstream=upstream.base_url)])
    server = GatewayServer(create_app(settings, routes)).start()
    try:
        admin = {"Authorization": f"Bearer {tenant.admin}"}
        sdk = client(server, tenant.app)
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(**ask("plain", "alpha"))
        old = httpx.get(f"{server.url}/v1/policies", headers=admin).json()["sha256"]

        # the app role may not reload
        assert (
            httpx.post(
                f"{server.url}/v1/admin/policies/reload",
                headers={"Authorization": f"Bearer {tenant.app}"},
            ).status_code
            == 403
        )

        write_bundle(
            path,
            {
                "bundle": "v2",
                "policies": [
                    policy(
                        "t",
                        "plain",
                        "pre",
                        {"type": "blocked_terms", "patterns": ["beta"]},
                        "block",
                    )
                ],
            },
        )
        resp = httpx.post(f"{server.url}/v1/admin/policies/reload", headers=admin)
        assert resp.status_code == 200, resp.text
        new = resp.json()["new_sha256"]
        assert resp.json()["old_sha256"] == old != new
        assert sdk.chat.completions.create(**ask("plain", "alpha")).choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(**ask("plain", "beta"))

        path.write_text("bundle: v3\npolicies:\n  - id: t\n    stage: sometimes\n")
        bad = httpx.post(f"{server.url}/v1/admin/policies/reload", headers=admin)
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["code"] == "invalid_policy_bundle"
        assert f"{path}:4: policies.0.stage:" in error["message"]
        assert f"{path}:3: policies.0.description: Field required" in error["message"]
        assert httpx.get(f"{server.url}/v1/policies", headers=admin).json()["sha256"] == new
        with pytest.raises(openai.PermissionDeniedError):  # the previous bundle still applies
            sdk.chat.completions.create(**ask("plain", "beta"))
    finally:
        server.stop()
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            events = conn.execute(
                select(AdminEvent.action, AdminEvent.detail, AdminEvent.actor).where(
                    AdminEvent.target == str(path)
                )
            ).all()
    finally:
        engine.dispose()
    actions = [e.action for e in events]
    assert actions == ["policies.loaded", "policies.reloaded"]
    reloaded = events[1].detail
    assert (reloaded["old_sha256"], reloaded["new_sha256"]) == (old, new)
    assert reloaded["bundle"]["bundle"] == "v2" and events[1].actor.startswith("key:")


def test_a_malformed_bundle_stops_the_gateway_from_starting(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "bundle: bad\npolicies:\n  - id: x\n    description: d\n    stage: pre\n"
        "    check: {type: pii}\n    action: shout\n"
    )
    with pytest.raises(InvalidPolicyBundle, match=rf"{path}:7: policies.0.action:"):
        create_app(make_settings(database_url, tmp_path, policy_bundle=path), RoutesFile())
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "9"],
        env={
            "PATH": "/usr/bin:/bin",
            "PROVENANT_DATABASE_URL": database_url,
            "PROVENANT_CONFIG": str(routes),
            "PROVENANT_POLICY_BUNDLE": str(path),
            "PROVENANT_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}:7: policies.0.action:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_hash_only_answer_is_not_kept_to_replay_and_its_retry_is_refused(
    guarded: GatewayServer, tenant: TenantKeys
) -> None:
    """The idempotent replay holds content, so it follows the record's content mode: no clear
    text kept, so no replay; the retry names the audit id instead of answering twice."""
    headers = {"Idempotency-Key": "hash-only-retry-1"}
    sdk = client(guarded, tenant.app)
    answer = sdk.chat.completions.create(**ask("hash-only", "secret plan"), extra_headers=headers)
    audit_id = answer.model_extra["provenance"]["audit_id"]
    with pytest.raises(openai.APIStatusError) as retry:
        sdk.chat.completions.create(**ask("hash-only", "secret plan"), extra_headers=headers)
    assert retry.value.status_code == 410
    assert isinstance(retry.value.body, dict)
    assert retry.value.body["code"] == "idempotency_replay_unavailable"
    assert audit_id in retry.value.body["message"]
