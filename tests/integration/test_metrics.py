"""``GET /metrics``: who may scrape it, and what the counts say after real traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.gateway.writer import AuditWriter
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange
from service.telemetry.metrics import Metrics
from service.tenancy import repository
from service.tenancy.auth import Principal
from service.tenancy.models import Role
from service.tenancy.service import create_key
from tests.conftest import TenantKeys
from tests.integration.test_errors import assert_openai_error
from tests.support.db import create_postgres_database, drop_postgres_database, postgres_admin_url
from tests.support.servers import GatewayServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def scraper_key(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        key = create_key(session, tenant="ops", role="metrics", label="prometheus").key
        session.commit()
    return key


def scrape(gateway: GatewayServer, key: str) -> Samples:
    resp = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_only_metrics_keys_may_scrape_and_they_may_do_nothing_else(
    gateway: GatewayServer, tenant: TenantKeys, scraper_key: str
) -> None:
    url = f"{gateway.url}/metrics"
    assert_openai_error(httpx.get(url), 401, "invalid_api_key")
    for key in (tenant.app, tenant.auditor, tenant.admin):
        resp = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
        assert "metrics" in assert_openai_error(resp, 403, "forbidden")["message"]
    scrape(gateway, scraper_key)
    auth = {"Authorization": f"Bearer {scraper_key}"}
    assert_openai_error(httpx.get(f"{gateway.url}/v1/models", headers=auth), 403, "forbidden")
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=auth)
    assert_openai_error(resp, 403, "forbidden")


def test_traffic_shows_up_by_route_and_status(
    gateway: GatewayServer, tenant: TenantKeys, scraper_key: str
) -> None:
    before = scrape(gateway, scraper_key)
    auth = {"Authorization": f"Bearer {tenant.app}"}
    url = f"{gateway.url}/v1/chat/completions"
    msgs = [{"role": "user", "content": "count me in"}]
    for body in (
        {"model": "echo", "messages": msgs},
        {"model": "echo", "messages": msgs},
        {"model": "echo", "messages": msgs, "stream": True},
        {"model": "fail", "messages": msgs},
    ):
        httpx.post(url, json=body, headers=auth)
    httpx.get(f"{gateway.url}/no/such/path", headers=auth)
    after = scrape(gateway, scraper_key)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"method": "POST", "route": "/v1/chat/completions"}
    assert delta("provenant_http_requests_total", **chat, status="200") == 3
    assert delta("provenant_http_requests_total", **chat, status="502") == 1
    assert delta("provenant_http_request_duration_seconds_count", **chat, status="200") == 3
    assert delta("provenant_http_requests_total", method="GET", route="unmatched", status="404")
    assert delta("provenant_answers_total", route="echo", status="ok") == 3
    assert delta("provenant_answers_total", route="fail", status="upstream_error") == 1
    assert delta("provenant_upstream_duration_seconds_count", route="echo", stream="false") == 2
    assert delta("provenant_upstream_duration_seconds_count", route="echo", stream="true") == 1
    # "Echo: count me in" is 4 words; the stream asked for no usage, so it reports none
    assert delta("provenant_answer_tokens_total", route="echo", type="output") == 2 * 4
    # 4 answers committed, in at most 4 transactions
    assert delta("provenant_audit_commit_batch_size_sum") == 4
    assert 1 <= delta("provenant_audit_commit_duration_seconds_count") <= 4
    assert value(after, "provenant_lineage_store_up") == 1
    assert ("process_cpu_seconds_total", frozenset()) in after


def test_the_sealer_reports_its_checkpoints_and_the_backlog_drains(
    gateway: GatewayServer, tenant: TenantKeys, scraper_key: str
) -> None:
    auth = {"Authorization": f"Bearer {tenant.app}"}
    body = {"model": "echo", "messages": [{"role": "user", "content": "seal me"}]}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth).is_success
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(gateway, scraper_key)
        if value(samples, "provenant_log_unsealed_entries") == 0:
            break
        assert time.monotonic() < deadline, "the backlog did not drain"
        time.sleep(0.2)
    assert value(samples, "provenant_log_oldest_unsealed_age_seconds") == 0
    assert value(samples, "provenant_sealer_checkpoints_total") >= 1
    assert value(samples, "provenant_sealer_entries_total") >= 1
    last = value(samples, "provenant_sealer_last_seal_timestamp_seconds")
    assert time.time() - 60 < last <= time.time()


def test_steady_traffic_gets_a_checkpoint_per_seal_interval_not_per_few_answers(
    gateway: GatewayServer, tenant: TenantKeys, scraper_key: str
) -> None:
    """The sealer seals what is pending when it wakes (every 0.2 s here), then sleeps: answers
    arriving while it seals wait for its next run instead of keeping it sealing back to back
    (which had signed a checkpoint every few answers for as long as traffic lasted)."""
    auth = {"Authorization": f"Bearer {tenant.app}"}
    body = {"model": "echo", "messages": [{"role": "user", "content": "keep going"}]}
    before = scrape(gateway, scraper_key)
    started = time.monotonic()
    answers = 0
    with httpx.Client(headers=auth, timeout=10) as client:
        while time.monotonic() - started < 3.0:
            r = client.post(f"{gateway.url}/v1/chat/completions", json=body)
            assert r.is_success
            answers += 1
    elapsed = time.monotonic() - started
    after = scrape(gateway, scraper_key)
    checkpoints = value(after, "provenant_sealer_checkpoints_total") - value(
        before, "provenant_sealer_checkpoints_total"
    )
    assert answers >= 60, "too little traffic to tell"
    # one run per interval (plus the one running when traffic began, and timer slack)
    assert 1 <= checkpoints <= elapsed / 0.2 + 3, (checkpoints, answers, elapsed)


@pytest.fixture
def unsealed_store(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database of the same kind that no gateway (so no sealer) touches."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'unsealed.db'}"
        upgrade(url)
        yield url
        return
    admin = postgres_admin_url()
    assert admin is not None
    url = create_postgres_database(admin)
    yield url
    drop_postgres_database(admin, url)


def test_backlog_gauges_count_pending_entries_and_the_oldest_age(unsealed_store: str) -> None:
    engine = make_engine(unsealed_store)
    with make_sessionmaker(engine)() as session:
        create_key(session, tenant="acme", role="app")
        session.commit()
        key, owner = repository.keys(session)[0]
    principal = Principal(key.id, key.prefix, owner.id, owner.name, Role(key.role))
    writer = AuditWriter(engine)
    writer.start()
    metrics = Metrics()
    metrics.watch_store(engine, writer)
    try:
        empty = parse(metrics.exposition(None)[0].decode())
        for _ in range(3):
            ex = Exchange(principal, "echo", "openai", {"model": "echo", "messages": []}, "e")
            row = ex.record_row(status=RecordStatus.ok, http_status=200, latency_ms=1.0)
            writer.submit(ex.rows(row)).result(timeout=10)
        time.sleep(0.05)
        samples = parse(metrics.exposition(None)[0].decode())
    finally:
        writer.stop()
        engine.dispose()
    assert value(empty, "provenant_log_unsealed_entries") == 1  # the key-created event
    assert value(samples, "provenant_log_unsealed_entries") == 4
    assert value(samples, "provenant_log_oldest_unsealed_age_seconds") >= 0.05
    assert value(samples, "provenant_lineage_store_up") == 1


def test_policy_outcomes_are_counted_per_policy_stage_and_outcome() -> None:
    metrics = Metrics()
    pre = (("no-pii", "pre", "block"), ("size", "pre", "pass"))
    metrics.count_decisions(pre)
    metrics.count_decisions(pre)
    metrics.count_decisions((("cite-sources", "post", "allow"),))
    body, content_type = metrics.exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    samples = parse(metrics.exposition(None)[0].decode())  # a second scrape adds nothing
    name = "provenant_policy_decisions_total"
    assert value(samples, name, policy="no-pii", stage="pre", outcome="block") == 2
    assert value(samples, name, policy="size", stage="pre", outcome="pass") == 2
    assert value(samples, name, policy="cite-sources", stage="post", outcome="allow") == 1
    metrics.count_decisions(pre)  # counted after a scrape: in the next one
    samples = parse(metrics.exposition(None)[0].decode())
    assert value(samples, name, policy="no-pii", stage="pre", outcome="block") == 3
    assert value(samples, name, policy="cite-sources", stage="post", outcome="allow") == 1


def test_label_values_stay_bounded_whatever_clients_send() -> None:
    metrics = Metrics()
    metrics.observe_http("BREW", "unmatched", 405, 0.001)
    metrics.observe_http("POST", "unmatched", 404, 0.001)
    samples = parse(metrics.exposition(None)[0].decode())
    total = "provenant_http_requests_total"
    assert value(samples, total, method="_OTHER", route="unmatched", status="405") == 1
    assert value(samples, total, method="POST", route="unmatched", status="404") == 1
