"""The schema comes only from migrations: upgrade an empty database, then `alembic check`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from service.db.engine import make_engine
from service.db.migrate import check, upgrade
from tests.support.db import postgres_admin_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh/provenant.db"
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    name = "provenant_migration_check"
    libpq = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_head_on_empty_database_matches_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    check(empty_database)  # raises if models and migrations disagree
    engine = make_engine(empty_database)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"tenants", "api_keys", "audit_records", "alembic_version"} <= tables
    upgrade(empty_database)  # idempotent
