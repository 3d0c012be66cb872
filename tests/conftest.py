"""Shared fixtures: real loopback servers and databases built by the migrations.

Storage-touching tests run twice, on SQLite and on PostgreSQL (``backend`` parameter).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.config import (
    ExtractiveRoute,
    OpenAIRoute,
    RagPassthroughRoute,
    RagRoute,
    RoutesFile,
    Settings,
    Timeouts,
)
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.tenancy.service import create_key
from tests.support.db import create_postgres_database, drop_postgres_database, postgres_admin_url
from tests.support.mlflow import MlflowServer, Registry
from tests.support.secrets import ISSUED, LOGS, UPSTREAM_KEY, UPSTREAM_KEY_ENV, scan
from tests.support.servers import GatewayServer, UpstreamServer, external_rag_app

QUICK = Timeouts(connect=2, read=0.5, total=5)
os.environ[UPSTREAM_KEY_ENV] = UPSTREAM_KEY


@pytest.fixture(scope="session", autouse=True)
def captured_logs() -> Iterator[None]:
    """Every log line of the suite, scanned for secrets with the session databases."""
    root = logging.getLogger()
    root.addHandler(LOGS)
    level = root.level
    if level == logging.NOTSET or level > logging.INFO:
        root.setLevel(logging.INFO)
    yield
    root.removeHandler(LOGS)
    root.setLevel(level)


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


_MLFLOW = pytest.StashKey[MlflowServer]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Launch the session's ``mlflow server`` as soon as a selected test needs it: it takes
    seconds to start, which then overlap with the tests that run before."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        root = Path(tempfile.mkdtemp(prefix="provenant-mlflow-"))
        config.stash[_MLFLOW] = MlflowServer(root).launch()


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_MLFLOW, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest) -> MlflowServer:
    """One real ``mlflow server`` for the session (SQLite backend store in a temp folder);
    tests stay independent by registering models under unique names."""
    server = request.config.stash.get(_MLFLOW, None)
    if server is None:  # requested without being collected (e.g. by a plugin): start now
        server = MlflowServer(Path(tempfile.mkdtemp(prefix="provenant-mlflow-"))).launch()
        request.config.stash[_MLFLOW] = server
    return server.wait_ready()


@pytest.fixture(scope="session")
def registry(mlflow_server: MlflowServer) -> Registry:
    return Registry(mlflow_server.url)


def routes_for(upstream_url: str) -> RoutesFile:
    """One route per upstream behaviour the tests exercise."""

    def route(name: str, model: str | None, timeouts: Timeouts = Timeouts()) -> OpenAIRoute:
        return OpenAIRoute(
            name=name, upstream=upstream_url, upstream_model=model, timeouts=timeouts
        )

    return RoutesFile(
        routes=[
            route("echo", "echo-1"),
            route("passthrough", None),
            route("fail", "fail-500"),
            route("reject", "reject-400"),
            route("bad-json", "bad-json"),
            route("slow", "slow-3000", QUICK),
            route("cut", "cut-stream"),
            route("stall", "stall-stream", QUICK),
            route("drip", "drip-100"),
            OpenAIRoute(
                name="keyed",
                upstream=upstream_url,
                upstream_model="echo-1",
                api_key_env=UPSTREAM_KEY_ENV,
            ),
        ]
    )


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'provenant.db'}"
        upgrade(url)
        yield url
        _no_secrets(url)
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    url = create_postgres_database(admin)
    yield url
    try:
        _no_secrets(url)
    finally:
        drop_postgres_database(admin, url)


def _no_secrets(url: str) -> None:
    """After the whole session on this database: no API key, upstream key or Authorization
    value the suite used is stored in any table or in any log line."""
    assert len(ISSUED) > 0, "the scan must look for the keys the suite issued"
    leaks = scan(url)
    assert not leaks, f"secrets stored or logged: {leaks}"


@pytest.fixture(scope="session")
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    return Settings(
        database_url=database_url, data_dir=data_dir, config=Path("unused.yaml"), **overrides
    )  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def gateway(
    database_url: str, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    settings = make_settings(database_url, tmp_path_factory.mktemp("data"), seal_interval_s=0.2)
    server = GatewayServer(create_app(settings, routes_for(upstream.base_url))).start()
    yield server
    server.stop()


def rag_routes(upstream_url: str, external_url: str) -> RoutesFile:
    """Sourced routes over the ``hr`` collection, their generators, and an external RAG app."""
    return RoutesFile(
        routes=[
            OpenAIRoute(name="cite-first", upstream=upstream_url, upstream_model="cite-1"),
            OpenAIRoute(name="cite-both", upstream=upstream_url, upstream_model="cite-1_2"),
            OpenAIRoute(name="broken", upstream=upstream_url, upstream_model="fail-500"),
            ExtractiveRoute(name="hr-assistant", collection="hr", top_k=3),
            RagRoute(name="hr-rag", collection="hr", top_k=3, generator="cite-first"),
            RagRoute(name="hr-rag-both", collection="hr", top_k=3, generator="cite-both"),
            RagRoute(name="hr-rag-broken", collection="hr", top_k=3, generator="broken"),
            RagPassthroughRoute(name="external-rag", upstream=external_url),
        ]
    )


@pytest.fixture(scope="session")
def external_rag() -> Iterator[UpstreamServer]:
    server = UpstreamServer(external_rag_app()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rag_gateway(
    database_url: str,
    upstream: UpstreamServer,
    external_rag: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    """A gateway with the sourced routes, its own local Qdrant, small chunks and uploads."""
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("rag-data"),
        seal_interval_s=0.2,
        max_document_bytes=256 * 1024,
        chunk_chars=400,
    )
    app = create_app(settings, rag_routes(upstream.base_url, external_rag.base_url))
    server = GatewayServer(app).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class TenantKeys:
    tenant: str
    app: str
    auditor: str
    admin: str
    metrics: str


def new_tenant(sessions: sessionmaker[Session]) -> TenantKeys:
    """A fresh tenant with one key per role, made through the real key service."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    with sessions() as session:
        keys = {
            role: create_key(session, tenant=name, role=role).key
            for role in ("app", "auditor", "admin", "metrics")
        }
        ISSUED.extend(keys.values())
        session.commit()
    return TenantKeys(name, keys["app"], keys["auditor"], keys["admin"], keys["metrics"])


@pytest.fixture
def tenant(sessions: sessionmaker[Session]) -> TenantKeys:
    return new_tenant(sessions)


@pytest.fixture
def other_tenant(sessions: sessionmaker[Session]) -> TenantKeys:
    return new_tenant(sessions)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server, migrated to head (for tests that need
    PostgreSQL itself: several processes, advisory locks)."""
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    url = create_postgres_database(admin)
    yield url
    drop_postgres_database(admin, url)
