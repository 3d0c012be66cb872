"""Model lineage for auditors: which snapshots served the tenant's answers, and which answers
each one served. Another tenant's usage is never counted or shown."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from service.errors import NotFound
from service.lineage import service as lineage
from service.lineage.repository import RecordFilter
from service.lineage.schemas import AuditRecordPage
from service.provenance import repository
from service.provenance.models import ModelSnapshot
from service.provenance.schemas import ModelSnapshotOut, ModelUsageOut, ModelUsagePage
from service.provenance.snapshots import model_view
from service.tenancy.auth import Principal


def _usage(row: Row[Any]) -> dict[str, Any]:
    snap: ModelSnapshot = row[0]
    m = row._mapping
    return {
        "id": snap.id,
        "snapshot_sha256": snap.snapshot_sha256,
        "registry_uri": snap.registry_uri,
        "name": snap.name,
        "version": snap.version,
        "alias": snap.alias,
        "run_id": snap.run_id,
        "resolved_at": snap.resolved_at,
        "lineage": model_view(snap.id, snap.snapshot_sha256, snap.content),
        "records": int(m["records"]),
        "answers": int(m["answers"] or 0),
        "stale_records": int(m["stale"] or 0),
        "first_used_at": m["first_used_at"],
        "last_used_at": m["last_used_at"],
    }


def list_models(
    session: Session, *, principal: Principal, name: str | None, limit: int, offset: int
) -> ModelUsagePage:
    """Every snapshot that served the caller's tenant, most recently used first."""
    rows = repository.served(
        session, principal.tenant_id, name=name, limit=limit + 1, offset=offset
    )
    return ModelUsagePage(
        data=[ModelUsageOut.model_validate(_usage(r)) for r in rows[:limit]],
        has_more=len(rows) > limit,
    )


def read_model(
    session: Session, *, principal: Principal, snapshot_id: uuid.UUID
) -> ModelSnapshotOut:
    """One snapshot in full, if it served the caller's tenant (otherwise: not found)."""
    row = repository.one_served(session, principal.tenant_id, snapshot_id)
    if row is None:
        raise NotFound(f"no model snapshot {snapshot_id} served answers in your tenant")
    return ModelSnapshotOut.model_validate({**_usage(row), "content": row[0].content})


def model_answers(
    session: Session,
    *,
    principal: Principal,
    snapshot_id: uuid.UUID,
    limit: int,
    cursor: uuid.UUID | None,
) -> AuditRecordPage:
    """The caller's tenant's records served by one snapshot, newest first: a records listing
    with that filter (audited like any other)."""
    flt = RecordFilter(model_snapshot_id=snapshot_id)
    page = lineage.list_records(session, principal=principal, flt=flt, limit=limit, cursor=cursor)
    if not page.data and cursor is None:
        raise NotFound(f"no model snapshot {snapshot_id} served answers in your tenant")
    return page
