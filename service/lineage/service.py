"""Reading the audit log, always within the caller's tenant."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from service.errors import NotFound
from service.lineage import repository
from service.lineage.events import record_event
from service.lineage.repository import RecordFilter
from service.lineage.schemas import (
    AuditRecordOut,
    AuditRecordPage,
    AuditRecordSummary,
    PolicyDecisionOut,
    RecordSource,
)
from service.provenance.models import ModelSnapshot
from service.provenance.schemas import ModelLineageOut
from service.provenance.snapshots import model_view
from service.tenancy.auth import Principal


def read_record(session: Session, *, principal: Principal, record_id: uuid.UUID) -> AuditRecordOut:
    """One record of the caller's tenant; another tenant's record is indistinguishable from none."""
    record = repository.get(session, principal.tenant_id, record_id)
    if record is None:
        raise NotFound(f"no audit record {record_id}")
    record_event(  # reads of the log are on the log (who read what, when)
        session,
        actor=f"key:{principal.key_prefix}",
        action="record.read",
        tenant_id=principal.tenant_id,
        target=f"record:{record_id}",
    )
    out = AuditRecordOut.model_validate(record)
    out.policies = [
        PolicyDecisionOut.model_validate(d) for d in repository.decisions(session, record_id)
    ]
    if record.model_snapshot_id is not None:
        snap = session.get(ModelSnapshot, record.model_snapshot_id)
        if snap is not None:
            view = model_view(snap.id, snap.snapshot_sha256, snap.content)
            out.model = ModelLineageOut.model_validate(view)
    out.sources = _sources(session, record_id)
    return out


def _sources(session: Session, record_id: uuid.UUID) -> list[RecordSource]:
    """The record's sources; "current at answer time" comes from the retrieval row (a
    snapshot), the registry adds when the version was superseded, possibly since."""
    out: list[RecordSource] = []
    for r, chunk, version, doc, supersession in repository.sources(session, record_id):
        reported = r.reported or {}
        out.append(
            RecordSource(
                ref=r.rank,
                chunk_id=r.chunk_id,
                document_id=doc.id if doc else None,
                collection=doc.collection if doc else None,
                title=version.title if version else _str(reported.get("title")),
                source_uri=doc.source_uri if doc else _str(reported.get("source_uri")),
                version=version.version if version else None,
                version_id=r.document_version_id,
                content_sha256=version.content_sha256 if version else None,
                page=chunk.page if chunk else None,
                char_start=chunk.char_start if chunk else None,
                char_end=chunk.char_end if chunk else None,
                chunk_sha256=r.chunk_sha256,
                score=r.score,
                cited=r.cited,
                verified=r.verified,
                superseded=r.superseded,
                current_at_answer_time=None if r.superseded is None else not r.superseded,
                superseded_at=supersession.superseded_at if supersession else None,
                source_ref=r.source_ref,
                reported=r.reported,
            )
        )
    return out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def listed(
    session: Session,
    *,
    actor: str,
    principal: Principal,
    filters: dict[str, Any],
    cursor: uuid.UUID | None,
    returned: int,
) -> None:
    """Audit a read of the records list: who listed which filters, from where, how many."""
    record_event(
        session,
        actor=actor,
        action="records.listed",
        tenant_id=principal.tenant_id,
        target="records",
        detail={
            "filters": {k: (None if v is None else str(v)) for k, v in filters.items()},
            "cursor": None if cursor is None else str(cursor),
            "returned": returned,
        },
    )


def list_records(
    session: Session,
    *,
    principal: Principal,
    flt: RecordFilter,
    limit: int,
    cursor: uuid.UUID | None,
) -> AuditRecordPage:
    """A page of the caller's tenant's records, newest first."""
    rows = repository.page(session, principal.tenant_id, flt, limit=limit + 1, before=cursor)
    listed(
        session,
        actor=f"key:{principal.key_prefix}",
        principal=principal,
        filters=vars(flt),
        cursor=cursor,
        returned=min(len(rows), limit),
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return AuditRecordPage(
        data=[AuditRecordSummary.model_validate(r) for r in rows],
        has_more=has_more,
        next_cursor=rows[-1].id if has_more else None,
    )
