"""Queries for tenants and keys. Never commits."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tenancy.models import ApiKey, Tenant


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def key_with_tenant(session: Session, prefix: str) -> tuple[ApiKey, Tenant] | None:
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == prefix)
    ).one_or_none()
    return (row[0], row[1]) if row else None


def keys(session: Session, tenant_id: uuid.UUID | None = None) -> list[tuple[ApiKey, Tenant]]:
    stmt = select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    return [(k, t) for k, t in session.execute(stmt.order_by(Tenant.name, ApiKey.created_at))]


def keys_by_prefix_start(session: Session, start: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.prefix.startswith(start))))
