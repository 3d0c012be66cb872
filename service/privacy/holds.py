"""Legal holds: placed and released by admins, each an admin event in the log. An active hold
keeps retention and erasure away from the records it covers."""

from __future__ import annotations

import uuid
from typing import Any

import uuid_utils
from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.errors import InvalidRequest, NotFound
from service.lineage.events import record_event
from service.lineage.models import AuditRecord
from service.privacy.models import HoldScope, LegalHold


def place(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    scope: str,
    value: str,
    reason: str,
    actor: str,
) -> LegalHold:
    """Place a hold on a subject, a record or a route of the tenant."""
    try:
        kind = HoldScope(scope)
    except ValueError as exc:
        raise InvalidRequest(f"unknown hold scope {scope!r}; use subject, record or route") from exc
    if not reason.strip():
        raise InvalidRequest("a hold needs a reason", param="reason")
    hold = LegalHold(
        id=uuid.UUID(bytes=uuid_utils.uuid7().bytes),
        tenant_id=tenant_id,
        scope=kind.value,
        reason=reason[:2000],
        created_by=actor[:200],
        created_at=utcnow(),
    )
    if kind is HoldScope.record:
        try:
            hold.record_id = uuid.UUID(value)
        except ValueError as exc:
            raise InvalidRequest("a record hold needs a record id (UUID)", param="value") from exc
    elif kind is HoldScope.subject:
        hold.subject = value[:256]
    else:
        hold.route = value[:200]
    session.add(hold)
    record_event(
        session,
        actor=actor,
        action="hold.placed",
        tenant_id=tenant_id,
        target=f"hold:{hold.id}",
        detail={"scope": kind.value, "value": value[:256], "reason": hold.reason},
    )
    return hold


def release(
    session: Session, *, tenant_id: uuid.UUID, hold_id: uuid.UUID, reason: str, actor: str
) -> LegalHold:
    """Release an active hold of the tenant (once)."""
    hold = session.get(LegalHold, hold_id)
    if hold is None or hold.tenant_id != tenant_id:
        raise NotFound(f"no legal hold {hold_id}")
    if hold.released_at is not None:
        raise InvalidRequest(f"legal hold {hold_id} was already released")
    if not reason.strip():
        raise InvalidRequest("a release needs a reason", param="reason")
    hold.released_at = utcnow()
    hold.released_by = actor[:200]
    hold.release_reason = reason[:2000]
    record_event(
        session,
        actor=actor,
        action="hold.released",
        tenant_id=tenant_id,
        target=f"hold:{hold.id}",
        detail={"reason": hold.release_reason},
    )
    return hold


def listing(session: Session, tenant_id: uuid.UUID, *, active_only: bool) -> list[LegalHold]:
    stmt = select(LegalHold).where(LegalHold.tenant_id == tenant_id)
    if active_only:
        stmt = stmt.where(LegalHold.released_at.is_(None))
    return list(session.scalars(stmt.order_by(LegalHold.created_at)))


def covers(record: type[AuditRecord] = AuditRecord) -> ColumnElement[bool]:
    """SQL: an active hold of the record's tenant covers it (by subject, record or route)."""
    return exists().where(
        LegalHold.tenant_id == record.tenant_id,
        LegalHold.released_at.is_(None),
        or_(
            and_(LegalHold.scope == HoldScope.subject.value, LegalHold.subject == record.end_user),
            and_(LegalHold.scope == HoldScope.record.value, LegalHold.record_id == record.id),
            and_(LegalHold.scope == HoldScope.route.value, LegalHold.route == record.route),
        ),
    )


def view(hold: LegalHold) -> dict[str, Any]:
    """A hold as the API and CLI show it."""
    value = hold.subject or hold.route or (str(hold.record_id) if hold.record_id else None)
    return {
        "id": str(hold.id),
        "scope": hold.scope,
        "value": value,
        "reason": hold.reason,
        "created_by": hold.created_by,
        "created_at": hold.created_at.isoformat(),
        "released_at": None if hold.released_at is None else hold.released_at.isoformat(),
        "released_by": hold.released_by,
        "release_reason": hold.release_reason,
    }
