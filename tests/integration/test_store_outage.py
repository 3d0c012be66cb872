"""Fail closed: with the lineage store unreachable no answer leaves, and service resumes by itself.

PostgreSQL is reached through a TCP relay so the test can cut the database off the way a network
partition or a database restart does, without stopping the shared server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from service.app import create_app
from service.db.engine import make_engine, make_sessionmaker
from tests.conftest import TenantKeys, make_settings, new_tenant, routes_for
from tests.support.db import create_postgres_database, drop_postgres_database, postgres_admin_url
from tests.support.servers import GatewayServer, TcpRelay, UpstreamServer

pytestmark = pytest.mark.postgres
BODY = {"model": "echo", "messages": [{"role": "user", "content": "are you audited?"}]}


@pytest.fixture
def relayed_database() -> Iterator[tuple[str, TcpRelay]]:
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    url = create_postgres_database(admin)
    parsed = make_url(url)
    relay = TcpRelay(parsed.host or "127.0.0.1", parsed.port or 5432)
    relayed = parsed.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    yield relayed, relay
    relay.close()
    drop_postgres_database(admin, url)


def ask(gateway: GatewayServer, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def tenant_on(url: str) -> TenantKeys:
    """A tenant with keys, written while the database is still reachable."""
    engine = make_engine(url)
    try:
        return new_tenant(make_sessionmaker(engine))
    finally:
        engine.dispose()


def test_outage_while_serving_withholds_answers_then_recovers(
    relayed_database: tuple[str, TcpRelay], upstream: UpstreamServer, tmp_path: Path
) -> None:
    url, relay = relayed_database
    keys = tenant_on(url)
    settings = make_settings(url, tmp_path, store_probe_interval_s=0.2)
    gateway = GatewayServer(create_app(settings, routes_for(upstream.base_url))).start()
    try:
        assert ask(gateway, keys.app).status_code == 200

        relay.cut()
        before = len(upstream.requests)
        outage = [ask(gateway, keys.app) for _ in range(3)]
        assert [r.status_code for r in outage] == [503, 503, 503]
        assert {r.json()["error"]["code"] for r in outage} == {"lineage_store_unavailable"}
        assert all("provenance" not in r.json() for r in outage)
        # the first request learns of the outage at commit time; after that none goes upstream
        assert len(upstream.requests) - before <= 1
        ready = httpx.get(f"{gateway.url}/readyz", timeout=30)
        assert ready.status_code == 503

        relay.restore()
        deadline = time.monotonic() + 15
        while (resp := ask(gateway, keys.app)).status_code != 200:
            assert time.monotonic() < deadline, resp.text
            time.sleep(0.2)
        record = httpx.get(
            f"{gateway.url}/v1/audit/records/{resp.json()['provenance']['audit_id']}",
            headers={"Authorization": f"Bearer {keys.auditor}"},
            timeout=10,
        )
        assert record.status_code == 200
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    finally:
        gateway.stop()


def test_store_down_at_start_refuses_without_calling_upstream(
    relayed_database: tuple[str, TcpRelay], upstream: UpstreamServer, tmp_path: Path
) -> None:
    url, relay = relayed_database
    keys = tenant_on(url)
    relay.cut()
    gateway = GatewayServer(
        create_app(make_settings(url, tmp_path), routes_for(upstream.base_url))
    ).start()
    try:
        before = len(upstream.requests)
        resp = ask(gateway, keys.app)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "lineage_store_unavailable"
        assert len(upstream.requests) == before
        assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 503
    finally:
        gateway.stop()
