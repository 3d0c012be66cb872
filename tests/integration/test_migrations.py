"""The schema comes only from migrations: upgrade an empty database, then `alembic check`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from service.db.engine import make_engine
from service.db.migrate import check, upgrade
from tests.support.db import create_postgres_database, drop_postgres_database, postgres_admin_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh/provenant.db"
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    url = create_postgres_database(admin, migrate=False)  # a name of its own: runs can overlap
    yield url
    drop_postgres_database(admin, url)


def test_upgrade_head_on_empty_database_matches_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    check(empty_database)  # raises if models and migrations disagree
    engine = make_engine(empty_database)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"tenants", "api_keys", "audit_records", "alembic_version"} <= tables
    upgrade(empty_database)  # idempotent
