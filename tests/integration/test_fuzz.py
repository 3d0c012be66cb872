"""Schemathesis over the gateway's own OpenAPI schema: thousands of generated calls, each with a
key of a role the access table allows, and no answer may be a 5xx from Provenant's own code."""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.tenancy.access import ACCESS, PUBLIC
from service.tenancy.models import Role
from tests.conftest import TenantKeys
from tests.support.servers import GatewayServer

# per operation and backend (SQLite and PostgreSQL): ~3,500 calls in all with 25 operations
EXAMPLES = int(os.environ.get("PROVENANT_FUZZ_EXAMPLES", "70"))


def _key(tenant: TenantKeys, method: str, path: str) -> dict[str, str]:
    roles = ACCESS[(method, path)]
    if roles == PUBLIC:
        return {}
    role = next(r for r in (Role.admin, Role.auditor, Role.app, Role.metrics) if r in roles)
    return {"Authorization": f"Bearer {getattr(tenant, role.value)}"}


def test_no_server_errors_from_generated_calls(gateway: GatewayServer, tenant: TenantKeys) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    calls = 0
    failures: list[str] = []

    def fuzz(session: requests.Session, operation: Any, headers: dict[str, str]) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=gateway.url, session=session, headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        call()

    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            headers = _key(tenant, operation.method.upper(), operation.path)
            fuzz(session, operation, headers)
    assert calls >= EXAMPLES * 5, calls
    assert not failures, failures[:10]
