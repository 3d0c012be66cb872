"""Test databases built by the migrations: a SQLite file, or a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from service.db.migrate import upgrade


def postgres_admin_url() -> str | None:
    """The PostgreSQL server tests may use, or None (then PostgreSQL tests are skipped locally).

    With PROVENANT_TEST_REQUIRE_POSTGRES=1 (CI) an unset or unreachable server fails the run.
    """
    url = os.environ.get("PROVENANT_TEST_POSTGRES_URL")
    required = os.environ.get("PROVENANT_TEST_REQUIRE_POSTGRES") == "1"
    if not url:
        if required:
            pytest.fail("PROVENANT_TEST_POSTGRES_URL is required but not set")
        return None
    try:
        with psycopg.connect(_libpq(url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {make_url(url).host} is required and unreachable: {exc}")
    return url


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_postgres_database(admin_url: str, *, migrate: bool = True) -> str:
    """Create an empty database with a name of its own, migrate it to head (unless told not
    to), return its URL."""
    name = f"provenant_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    if migrate:
        upgrade(url)
    return url


def drop_postgres_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
