"""Every endpoint of the OpenAPI schema x every role (and no key) x own / other tenant.

The expected outcome comes from the one declared access table (service/tenancy/access.py):
no key → 401 unless the endpoint is public; a role the table does not list → 403; an allowed
role → the call works on its own tenant's objects, and another tenant's objects are
indistinguishable from missing ones (404). An endpoint added without a rule in the table, or
without a call described here, fails this test.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.documents.models import Chunk, DocumentVersion
from service.tenancy.access import ACCESS, PUBLIC
from service.tenancy.models import Role
from service.ui.endpoints import router as ui_router
from tests.conftest import TenantKeys, new_tenant
from tests.support.servers import GatewayServer


@dataclass
class Objects:
    """Objects of the owning tenant that path parameters point at."""

    record_id: str
    tree_size: int
    hold_ids: list[str] = field(default_factory=list)
    document_id: str = ""
    chunk_id: str = ""


@dataclass(frozen=True)
class Call:
    """How to call an endpoint: path parameters, query, JSON body, and whether its object
    belongs to a tenant (so another tenant must get 404)."""

    params: Callable[[Objects], dict[str, Any]] = lambda _: {}
    query: Callable[[Objects], dict[str, Any]] = lambda _: {}
    body: Callable[[Objects], dict[str, Any] | None] = lambda _: None
    tenant_object: bool = False
    ok: frozenset[int] = frozenset({200})


CALLS: dict[tuple[str, str], Call] = {
    ("GET", "/healthz"): Call(),
    ("GET", "/readyz"): Call(),
    ("POST", "/v1/chat/completions"): Call(
        body=lambda _: {"model": "echo", "messages": [{"role": "user", "content": "matrix"}]}
    ),
    ("GET", "/v1/models"): Call(),
    ("GET", "/v1/audit/records/{record_id}"): Call(
        params=lambda o: {"record_id": o.record_id}, tenant_object=True
    ),
    ("GET", "/v1/audit/records"): Call(query=lambda _: {"limit": 1}),
    ("GET", "/.well-known/jwks.json"): Call(),
    ("GET", "/v1/audit/checkpoints/latest"): Call(),
    ("GET", "/v1/audit/checkpoints/{size}"): Call(params=lambda o: {"size": o.tree_size}),
    ("GET", "/v1/audit/records/{record_id}/proof"): Call(
        params=lambda o: {"record_id": o.record_id}, tenant_object=True
    ),
    ("GET", "/v1/audit/consistency"): Call(
        query=lambda o: {"from": o.tree_size, "to": o.tree_size}
    ),
    ("GET", "/v1/policies"): Call(),
    ("POST", "/v1/admin/policies/reload"): Call(),
    ("POST", "/v1/admin/holds"): Call(
        body=lambda _: {"scope": "route", "value": "matrix-route", "reason": "matrix"},
        ok=frozenset({201}),
    ),
    ("GET", "/v1/admin/holds"): Call(),
    ("POST", "/v1/admin/holds/{hold_id}/release"): Call(
        # own admin releases it (first allowed call), the other tenant's admin gets 404
        params=lambda o: {"hold_id": o.hold_ids[0]},
        body=lambda _: {"reason": "matrix"},
        tenant_object=True,
    ),
    ("POST", "/v1/admin/erasure"): Call(
        body=lambda _: {"subject": f"nobody-{uuid.uuid4().hex[:6]}", "reason": "matrix"}
    ),
    ("POST", "/v1/admin/retention/run"): Call(body=lambda _: {"dry_run": True}),
    ("GET", "/metrics"): Call(),
    ("GET", "/v1/lineage/models"): Call(),
    ("POST", "/v1/documents"): Call(
        body=lambda _: {
            "collection": "matrix",
            "source_uri": f"mem://matrix/{uuid.uuid4().hex}",
            "text": "Remote work needs a manager's approval.",
        },
        ok=frozenset({201}),
    ),
    ("GET", "/v1/documents"): Call(),
    ("GET", "/v1/documents/{document_id}/versions"): Call(
        params=lambda o: {"document_id": o.document_id}, tenant_object=True
    ),
    ("GET", "/v1/chunks/{chunk_id}"): Call(
        params=lambda o: {"chunk_id": o.chunk_id}, tenant_object=True
    ),
    # the shared gateway has no registry-linked route, so no snapshot served this tenant:
    # allowed roles get 404 here (tests/integration/test_model_lineage.py covers the 200s)
    ("GET", "/v1/lineage/models/{snapshot_id}"): Call(
        params=lambda _: {"snapshot_id": str(uuid.UUID(int=1))}, ok=frozenset({404})
    ),
    ("GET", "/v1/lineage/models/{snapshot_id}/answers"): Call(
        params=lambda _: {"snapshot_id": str(uuid.UUID(int=1))}, ok=frozenset({404})
    ),
    ("GET", "/v1/reports/{kind}"): Call(
        params=lambda _: {"kind": "activity"}, query=lambda _: PERIOD
    ),
    ("GET", "/v1/evidence"): Call(query=lambda _: PERIOD),
}
PERIOD = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}

# the auditor UI: a signed session cookie instead of a bearer key. Without a session (no key, or
# a role that may not sign in) a page redirects to the sign-in form; another tenant's objects 404
UI_CALLS: dict[tuple[str, str], Call] = {
    ("GET", "/ui"): Call(ok=frozenset({303})),
    ("GET", "/ui/login"): Call(),
    ("POST", "/ui/login"): Call(),
    ("POST", "/ui/logout"): Call(ok=frozenset({303})),
    ("GET", "/ui/answers"): Call(),
    ("GET", "/ui/answers/{record_id}"): Call(
        params=lambda o: {"record_id": o.record_id}, tenant_object=True
    ),
    ("GET", "/ui/documents"): Call(),
    ("GET", "/ui/documents/{document_id}"): Call(
        params=lambda o: {"document_id": o.document_id}, tenant_object=True
    ),
    ("GET", "/ui/reports"): Call(),
    ("GET", "/ui/reports/{kind}"): Call(
        params=lambda _: {"kind": "activity"}, query=lambda _: {**PERIOD, "format": "csv"}
    ),
    ("GET", "/ui/evidence"): Call(query=lambda _: PERIOD),
    ("GET", "/ui/integrity"): Call(),
}

ROLES: list[Role | None] = [None, *Role]


def _key(keys: TenantKeys, role: Role | None) -> str | None:
    return None if role is None else getattr(keys, role.value)


def _request(
    client: httpx.Client,
    gateway: GatewayServer,
    method: str,
    path: str,
    call: Call,
    objects: Objects,
    key: str | None,
) -> httpx.Response:
    url = gateway.url + path.format(**call.params(objects))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(
        method, url, params=call.query(objects), json=call.body(objects), headers=headers
    )


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # one client: creating one per request costs more than the requests (its TLS context)
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def owner(sessions: sessionmaker[Session]) -> TenantKeys:
    return new_tenant(sessions)


@pytest.fixture(scope="module")
def stranger(sessions: sessionmaker[Session]) -> TenantKeys:
    return new_tenant(sessions)


@pytest.fixture(scope="module")
def objects(gateway: GatewayServer, owner: TenantKeys, sessions: sessionmaker[Session]) -> Objects:
    tenant = owner
    app = {"Authorization": f"Bearer {tenant.app}"}
    body = {"model": "echo", "messages": [{"role": "user", "content": "owned"}]}
    record_id = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=app).json()[
        "provenance"
    ]["audit_id"]
    deadline = time.monotonic() + 20
    while (
        proof := httpx.get(f"{gateway.url}/v1/audit/records/{record_id}/proof", headers=app)
    ).status_code != 200:
        assert time.monotonic() < deadline, proof.text
        time.sleep(0.1)
    admin = {"Authorization": f"Bearer {tenant.admin}"}
    holds = [
        httpx.post(
            f"{gateway.url}/v1/admin/holds",
            json={"scope": "subject", "value": f"held-{i}", "reason": "matrix"},
            headers=admin,
        ).json()["id"]
        for i in range(1)
    ]
    doc = httpx.post(
        f"{gateway.url}/v1/documents",
        json={
            "collection": "matrix",
            "source_uri": "mem://matrix/own",
            "text": "Leave is 25 days.",
        },
        headers=admin,
    )
    assert doc.status_code == 201, doc.text
    document_id = doc.json()["document"]["id"]
    with sessions() as session:
        chunk_id = session.scalars(
            select(Chunk.id)
            .join(DocumentVersion, DocumentVersion.id == Chunk.version_id)
            .where(DocumentVersion.document_id == uuid.UUID(document_id))
        ).first()
    return Objects(record_id, proof.json()["tree_size"], holds, document_id, str(chunk_id))


def _ui_endpoints() -> set[tuple[str, str]]:
    """The UI's pages (not in the OpenAPI schema), from its router."""
    return {
        (method, route.path)
        for route in ui_router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }


def test_every_endpoint_has_a_rule_and_a_described_call(gateway: GatewayServer) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json").json()
    endpoints = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    ui = _ui_endpoints()
    assert ui and not any(p.startswith("/ui") for _, p in endpoints), "UI pages stay out of the API"
    endpoints |= ui
    assert endpoints - set(ACCESS) == set(), "endpoints without an access rule"
    assert endpoints - set(CALLS) - set(UI_CALLS) == set(), "endpoints this matrix does not call"
    assert set(ACCESS) - endpoints == set(), "access rules for endpoints that do not exist"


@pytest.mark.parametrize("endpoint", sorted(CALLS), ids=lambda e: f"{e[0]} {e[1]}")
def test_route_role_tenant_matrix(
    gateway: GatewayServer,
    client: httpx.Client,
    owner: TenantKeys,
    stranger: TenantKeys,
    objects: Objects,
    endpoint: tuple[str, str],
) -> None:
    method, path = endpoint
    call = CALLS[endpoint]
    allowed = ACCESS[endpoint]
    outcomes = []
    for keys, whose in ((owner, "own"), (stranger, "other")):
        for role in ROLES:
            resp = _request(client, gateway, method, path, call, objects, _key(keys, role))
            if allowed == PUBLIC:
                expected = call.ok
            elif role is None:
                expected = frozenset({401})
            elif role not in allowed:
                expected = frozenset({403})
            elif whose == "other" and call.tenant_object:
                expected = frozenset({404})
            else:
                expected = call.ok
            outcomes.append((whose, role, resp.status_code, expected))
            assert resp.status_code in expected, (whose, role, resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                error = resp.json()["error"]
                assert set(error) >= {"message", "type", "code"} and "Traceback" not in resp.text
    assert len(outcomes) == 2 * len(ROLES)


def _ui_session(client: httpx.Client, gateway: GatewayServer, key: str | None) -> dict[str, str]:
    """Sign in through the form (as a browser does); returns the headers a signed-in browser
    sends (cookie and same-origin), plus the form token as ``csrf``. No session: no cookie."""
    form = client.get(f"{gateway.url}/ui/login")
    login_cookie = form.cookies.get("provenant_ui_login") or ""
    token = re.search(r'name="token" value="([^"]+)"', form.text)
    assert token is not None and login_cookie
    if key is None:
        return {"csrf": ""}
    resp = client.post(
        f"{gateway.url}/ui/login",
        data={"key": key, "token": token.group(1)},
        headers={"Cookie": f"provenant_ui_login={login_cookie}", "Origin": gateway.url},
    )
    session = resp.cookies.get("provenant_ui")
    if session is None:
        assert resp.status_code in (401, 403), resp.text[:300]
        return {"csrf": ""}
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/answers"
    page = client.get(f"{gateway.url}/ui/answers", headers={"Cookie": f"provenant_ui={session}"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return {"Cookie": f"provenant_ui={session}", "Origin": gateway.url, "csrf": csrf.group(1)}


@pytest.mark.parametrize("endpoint", sorted(UI_CALLS), ids=lambda e: f"{e[0]} {e[1]}")
def test_ui_role_tenant_matrix(
    gateway: GatewayServer,
    client: httpx.Client,
    owner: TenantKeys,
    stranger: TenantKeys,
    objects: Objects,
    endpoint: tuple[str, str],
) -> None:
    method, path = endpoint
    call = UI_CALLS[endpoint]
    allowed = ACCESS[endpoint]
    for keys, whose in ((owner, "own"), (stranger, "other")):
        for role in ROLES:
            session = _ui_session(client, gateway, _key(keys, role))
            signed_in = "Cookie" in session
            assert signed_in == (role in {Role.auditor, Role.admin}), (role, session)
            csrf = session.pop("csrf")
            url = gateway.url + path.format(**call.params(objects))
            if method == "POST" and path == "/ui/login":
                resp = client.post(url, data={"key": "x", "token": "forged"}, headers=session)
                assert resp.status_code == 403 and "provenant_ui=" not in resp.headers.get(
                    "set-cookie", ""
                )
                continue
            data = {"csrf": csrf} if method == "POST" else None
            resp = client.request(
                method, url, params=call.query(objects), data=data, headers=session
            )
            if allowed == PUBLIC:
                expected = call.ok
            elif not signed_in:
                expected = frozenset({303})
            elif whose == "other" and call.tenant_object:
                expected = frozenset({404})
            else:
                expected = call.ok
            assert resp.status_code in expected, (whose, role, resp.status_code, resp.text[:300])
            if resp.status_code == 303 and allowed != PUBLIC and path != "/ui/logout":
                assert resp.headers["location"] == "/ui/login"
            if resp.headers.get("content-type", "").startswith("text/html"):
                assert "content-security-policy" in resp.headers
