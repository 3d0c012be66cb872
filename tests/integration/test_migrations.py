"""The schema comes only from migrations: upgrade an empty database, then `alembic check`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from service.db.engine import make_engine
from service.db.migrate import alembic_config, check, upgrade
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


def test_upgrade_keeps_an_existing_stores_lineage_rows(tmp_path: Path) -> None:
    """A SQLite store written before its lineage tables were clustered (WITHOUT ROWID) keeps
    every retrieval and decision through the upgrade, and through a downgrade back."""
    import sqlite3

    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0004_idempotency")
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("PRAGMA foreign_keys=OFF")  # lineage rows alone; their records do not matter here
    decisions = [
        (f"{i:032x}", f"policy-{i % 3}", "pre", "ab" * 32, "pass", None) for i in range(50)
    ]
    retrievals = [(f"{i:032x}", i % 4, None, f"doc-{i}", 0.5, 1) for i in range(50)]
    db.executemany("INSERT INTO policy_decisions VALUES (?, ?, ?, ?, ?, ?)", decisions)
    db.executemany(
        "INSERT INTO retrievals (record_id, rank, chunk_id, source_ref, score, cited) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        retrievals,
    )
    db.commit()
    db.close()

    def rows() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], str]:
        with sqlite3.connect(tmp_path / "old.db") as db:
            d = db.execute("SELECT * FROM policy_decisions ORDER BY record_id").fetchall()
            r = db.execute(
                "SELECT record_id, rank, chunk_id, source_ref, score, cited FROM retrievals "
                "ORDER BY record_id"
            ).fetchall()
            (sql,) = db.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'policy_decisions'"
            ).fetchone()
        return d, r, sql

    upgrade(url)
    d, r, sql = rows()
    assert d == sorted(decisions) and r == sorted(retrievals)
    assert "WITHOUT ROWID" in sql
    check(url)

    command.downgrade(alembic_config(url), "0004_idempotency")
    d, r, sql = rows()
    assert d == sorted(decisions) and r == sorted(retrievals)
    assert "WITHOUT ROWID" not in sql
