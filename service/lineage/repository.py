"""Queries over audit records. Never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.lineage.models import AuditRecord, PolicyDecision, Retrieval


@dataclass(frozen=True)
class RecordFilter:
    """Listing filters; every field optional."""

    start: datetime | None = None
    end: datetime | None = None
    route: str | None = None
    status: str | None = None
    end_user: str | None = None
    model_snapshot_id: uuid.UUID | None = None


def get(session: Session, tenant_id: uuid.UUID, record_id: uuid.UUID) -> AuditRecord | None:
    return session.scalars(
        select(AuditRecord).where(AuditRecord.id == record_id, AuditRecord.tenant_id == tenant_id)
    ).one_or_none()


def page(
    session: Session,
    tenant_id: uuid.UUID,
    flt: RecordFilter,
    *,
    limit: int,
    before: uuid.UUID | None,
) -> list[AuditRecord]:
    """Newest first; ``before`` is the last id of the previous page (UUIDv7 ids sort by time)."""
    stmt = select(AuditRecord).where(AuditRecord.tenant_id == tenant_id)
    if flt.start is not None:
        stmt = stmt.where(AuditRecord.created_at >= flt.start)
    if flt.end is not None:
        stmt = stmt.where(AuditRecord.created_at < flt.end)
    if flt.route is not None:
        stmt = stmt.where(AuditRecord.route == flt.route)
    if flt.status is not None:
        stmt = stmt.where(AuditRecord.status == flt.status)
    if flt.end_user is not None:
        stmt = stmt.where(AuditRecord.end_user == flt.end_user)
    if flt.model_snapshot_id is not None:
        stmt = stmt.where(AuditRecord.model_snapshot_id == flt.model_snapshot_id)
    if before is not None:
        stmt = stmt.where(AuditRecord.id < before)
    return list(session.scalars(stmt.order_by(AuditRecord.id.desc()).limit(limit)))


def decisions(session: Session, record_id: uuid.UUID) -> list[PolicyDecision]:
    """A record's policy decisions, pre stage first."""
    return list(
        session.scalars(
            select(PolicyDecision)
            .where(PolicyDecision.record_id == record_id)
            .order_by(PolicyDecision.stage.desc(), PolicyDecision.policy_id)
        )
    )


def sources(session: Session, record_id: uuid.UUID) -> list[Any]:
    """A record's retrievals in rank order, each with its chunk, version, document and the
    version's supersession when they exist (rows with those four, possibly None)."""
    stmt = (
        select(Retrieval, Chunk, DocumentVersion, Document, DocumentSupersession)
        .outerjoin(Chunk, Chunk.id == Retrieval.chunk_id)
        .outerjoin(DocumentVersion, DocumentVersion.id == Retrieval.document_version_id)
        .outerjoin(Document, Document.id == DocumentVersion.document_id)
        .outerjoin(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
        .where(Retrieval.record_id == record_id)
        .order_by(Retrieval.rank)
    )
    return list(session.execute(stmt))
