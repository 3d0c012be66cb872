"""Reading the audit log: tenant isolation, filters and cursor pagination."""

from __future__ import annotations

import httpx

from tests.conftest import TenantKeys, new_tenant
from tests.support.servers import GatewayServer


def ask(gateway: GatewayServer, key: str, model: str = "echo", user: str | None = None) -> str:
    body: dict = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if user:
        body["user"] = user
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return resp.headers["x-provenant-audit-id"]


def get(gateway: GatewayServer, key: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_no_record_of_another_tenant_is_readable(gateway: GatewayServer, sessions) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = new_tenant(sessions), new_tenant(sessions)
    our_id = ask(gateway, ours.app)
    their_id = ask(gateway, theirs.app)

    for key in (ours.app, ours.auditor, ours.admin):
        assert get(gateway, key, f"/v1/audit/records/{our_id}").status_code == 200
        resp = get(gateway, key, f"/v1/audit/records/{their_id}")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"

    listed = {r["id"] for r in get(gateway, ours.auditor, "/v1/audit/records").json()["data"]}
    assert our_id in listed and their_id not in listed
    assert get(gateway, ours.auditor, "/v1/audit/records", end_user="x").json()["data"] == []


def test_filters_and_cursor_pagination(gateway: GatewayServer, tenant: TenantKeys) -> None:
    ids = [ask(gateway, tenant.app, user="alice") for _ in range(5)]
    failed = ask(gateway, tenant.app, model="fail", user="bob")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = get(gateway, tenant.auditor, "/v1/audit/records", **params).json()
        seen += [r["id"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [failed, *reversed(ids)]  # newest first, nothing twice

    by_user = get(gateway, tenant.auditor, "/v1/audit/records", end_user="alice").json()["data"]
    assert {r["id"] for r in by_user} == set(ids)
    by_status = get(gateway, tenant.auditor, "/v1/audit/records", status="upstream_error").json()
    assert [r["id"] for r in by_status["data"]] == [failed]
    by_route = get(gateway, tenant.auditor, "/v1/audit/records", route="fail").json()["data"]
    assert [r["id"] for r in by_route] == [failed]
    future = get(gateway, tenant.auditor, "/v1/audit/records", **{"from": "2999-01-01T00:00:00"})
    assert future.json()["data"] == []
    first = get(gateway, tenant.auditor, "/v1/audit/records", limit=1).json()["data"][0]
    window = get(
        gateway,
        tenant.auditor,
        "/v1/audit/records",
        **{"from": first["created_at"], "to": "2999-01-01T00:00:00Z"},
    ).json()["data"]
    assert first["id"] in {r["id"] for r in window}


def test_bad_listing_parameters_get_400(gateway: GatewayServer, tenant: TenantKeys) -> None:
    for params in (
        {"limit": 0},
        {"limit": 1000},
        {"status": "nope"},
        {"cursor": "x"},
        {"from": "yesterday"},
    ):
        resp = get(gateway, tenant.auditor, "/v1/audit/records", **params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert get(gateway, tenant.auditor, "/v1/audit/records/not-a-uuid").status_code == 400


def test_health_and_readiness(gateway: GatewayServer) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["lineage_store"] == "ok"
