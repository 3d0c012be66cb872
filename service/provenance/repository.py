"""Queries over model snapshots and the records they served, always within one tenant.
Never commits."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.orm import Session

from service.lineage.models import AuditRecord, RecordStatus
from service.provenance.models import ModelSnapshot


def _usage(tenant_id: uuid.UUID) -> Any:
    """Per snapshot: the tenant's records pinned to it, answers, stale ones, first/last use."""
    return (
        select(
            AuditRecord.model_snapshot_id.label("snapshot_id"),
            func.count().label("records"),
            func.sum(case((AuditRecord.status == RecordStatus.ok.value, 1), else_=0)).label(
                "answers"
            ),
            func.sum(case((AuditRecord.lineage_stale.is_(True), 1), else_=0)).label("stale"),
            func.min(AuditRecord.created_at).label("first_used_at"),
            func.max(AuditRecord.created_at).label("last_used_at"),
        )
        .where(AuditRecord.tenant_id == tenant_id, AuditRecord.model_snapshot_id.is_not(None))
        .group_by(AuditRecord.model_snapshot_id)
        .subquery()
    )


def served(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    name: str | None,
    limit: int,
    offset: int,
) -> list[Row[Any]]:
    """Snapshots that served the tenant's records, most recently used first."""
    usage = _usage(tenant_id)
    stmt = select(ModelSnapshot, usage).join(usage, usage.c.snapshot_id == ModelSnapshot.id)
    if name is not None:
        stmt = stmt.where(ModelSnapshot.name == name)
    stmt = stmt.order_by(usage.c.last_used_at.desc(), ModelSnapshot.id).limit(limit).offset(offset)
    return list(session.execute(stmt))


def one_served(session: Session, tenant_id: uuid.UUID, snapshot_id: uuid.UUID) -> Row[Any] | None:
    """One snapshot with the tenant's usage, or None if it served none of the tenant's records."""
    usage = _usage(tenant_id)
    stmt = (
        select(ModelSnapshot, usage)
        .join(usage, usage.c.snapshot_id == ModelSnapshot.id)
        .where(ModelSnapshot.id == snapshot_id)
    )
    return session.execute(stmt).one_or_none()


def get(session: Session, snapshot_id: uuid.UUID) -> ModelSnapshot | None:
    return session.get(ModelSnapshot, snapshot_id)
