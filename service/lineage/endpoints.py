"""Audit record look-ups for downstream apps and auditors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import SessionDep
from service.lineage import service
from service.lineage.models import RecordStatus
from service.lineage.repository import RecordFilter
from service.lineage.schemas import AuditRecordOut, AuditRecordPage
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/records/{record_id}")
def get_record(
    record_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> AuditRecordOut:
    """One answer's full audit record (own tenant only)."""
    return service.read_record(session, principal=principal, record_id=record_id)


@router.get("/records")
def list_records(
    principal: CurrentPrincipal,
    session: SessionDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    route: Annotated[str | None, Query(max_length=200)] = None,
    status: RecordStatus | None = None,
    end_user: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: uuid.UUID | None = None,
) -> AuditRecordPage:
    """The tenant's records, newest first, filtered, with cursor pagination."""
    flt = RecordFilter(
        start=_utc(start),
        end=_utc(end),
        route=route,
        status=status.value if status else None,
        end_user=end_user,
    )
    return service.list_records(session, principal=principal, flt=flt, limit=limit, cursor=cursor)


def _utc(value: datetime | None) -> datetime | None:
    """A timestamp without a zone is taken as UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
