"""Model lineage for auditors: ``/v1/lineage/models``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import SessionDep
from service.lineage.schemas import AuditRecordPage
from service.provenance import service
from service.provenance.schemas import ModelSnapshotOut, ModelUsagePage
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(prefix="/v1/lineage", tags=["lineage"])


@router.get("/models")
def list_models(
    principal: CurrentPrincipal,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> ModelUsagePage:
    """Every model snapshot that served the tenant's answers, with first/last use and counts."""
    return service.list_models(session, principal=principal, name=name, limit=limit, offset=offset)


@router.get("/models/{snapshot_id}")
def get_model(
    snapshot_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ModelSnapshotOut:
    """One snapshot in full (what the registry said), with the tenant's usage."""
    return service.read_model(session, principal=principal, snapshot_id=snapshot_id)


@router.get("/models/{snapshot_id}/answers")
def model_answers(
    snapshot_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: uuid.UUID | None = None,
) -> AuditRecordPage:
    """The tenant's records served by one snapshot, newest first, with cursor pagination."""
    return service.model_answers(
        session, principal=principal, snapshot_id=snapshot_id, limit=limit, cursor=cursor
    )
