"""Admin events: what was done to the gateway (keys, erasure, reads of the log...), each one an
entry of the integrity log beside the audit records."""

from __future__ import annotations

import uuid
from typing import Any

import uuid_utils
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.integrity import leaf
from service.integrity.models import LogPending
from service.lineage.models import AdminEvent


def record_event(
    session: Session,
    *,
    actor: str,
    action: str,
    tenant_id: uuid.UUID | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AdminEvent:
    """Add an admin event and its pending log entry to the caller's transaction."""
    row: dict[str, Any] = {
        "id": uuid.UUID(bytes=uuid_utils.uuid7().bytes),
        "tenant_id": tenant_id,
        "actor": actor[:200],
        "action": action,
        "target": None if target is None else target[:500],
        "detail": detail,
        "created_at": utcnow(),
    }
    row["leaf_sha256"] = leaf.leaf_sha256(leaf.event_document(row))
    event = AdminEvent(**row)
    session.add(event)
    session.add(
        LogPending(
            entry_id=row["id"],
            kind=leaf.EVENT,
            leaf_sha256=row["leaf_sha256"],
            created_at=row["created_at"],
        )
    )
    return event
