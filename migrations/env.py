"""Alembic environment: runs migrations online against ``sqlalchemy.url``."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import engine_from_config, pool

from service.db.models import Base

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    logging.basicConfig(level=logging.INFO)

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
