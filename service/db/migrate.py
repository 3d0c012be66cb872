"""Run the Alembic migrations (the only way the schema changes)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.db.engine import normalize_url


def migrations_dir() -> Path:
    """``migrations/`` beside the package, or ``PROVENANT_MIGRATIONS_DIR``."""
    override = os.environ.get("PROVENANT_MIGRATIONS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config bound to a database URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring a database to ``revision``; creates the SQLite file's folder if needed."""
    from service.db.engine import make_engine

    make_engine(database_url).dispose()  # creates ./data for SQLite
    command.upgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Fail if the models and the migrations disagree (``alembic check``)."""
    command.check(alembic_config(database_url))
