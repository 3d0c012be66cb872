"""What each auditor page shows, always within the signed-in key's tenant; reads are on the
record like the API's (``record.read``, ``records.listed``)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.documents import repository as documents
from service.documents import service as document_service
from service.errors import NotFound, ProvenantError
from service.integrity import merkle
from service.integrity import service as integrity
from service.lineage import service as lineage
from service.lineage.models import AuditRecord, RecordStatus
from service.reports import attestation
from service.reports.queries import Scope
from service.tenancy.auth import Principal

PAGE = 50


@dataclass(frozen=True)
class AnswerFilter:
    """The answers list's filters (all optional)."""

    start: datetime | None = None
    end: datetime | None = None
    route: str | None = None
    status: str | None = None
    end_user: str | None = None
    q: str | None = None


def _actor(principal: Principal) -> str:
    return f"ui:key:{principal.key_prefix}"


def answers(
    session: Session,
    *,
    principal: Principal,
    flt: AnswerFilter,
    cursor: uuid.UUID | None,
    routes: list[str],
) -> dict[str, Any]:
    """A page of the tenant's records, newest first, filtered and searched (id, end user, or
    text in the prompt or answer as stored). ``routes``: the configured routes the route
    filter offers (with the one filtered on, if it was retired since), rather than a scan of
    every record for the routes they name."""
    stmt = select(AuditRecord).where(AuditRecord.tenant_id == principal.tenant_id)
    if flt.start is not None:
        stmt = stmt.where(AuditRecord.created_at >= flt.start)
    if flt.end is not None:
        stmt = stmt.where(AuditRecord.created_at < flt.end)
    if flt.route:
        stmt = stmt.where(AuditRecord.route == flt.route)
    if flt.status:
        stmt = stmt.where(AuditRecord.status == flt.status)
    if flt.end_user:
        stmt = stmt.where(AuditRecord.end_user == flt.end_user)
    if flt.q:
        try:
            stmt = stmt.where(AuditRecord.id == uuid.UUID(flt.q))
        except ValueError:
            pattern = "%" + flt.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern += "%"
            stmt = stmt.where(
                or_(
                    AuditRecord.prompt.ilike(pattern, escape="\\"),
                    AuditRecord.answer.ilike(pattern, escape="\\"),
                    AuditRecord.end_user.ilike(pattern, escape="\\"),
                )
            )
    if cursor is not None:
        stmt = stmt.where(AuditRecord.id < cursor)
    rows = list(session.scalars(stmt.order_by(AuditRecord.id.desc()).limit(PAGE + 1)))
    offered = sorted({*routes, flt.route} if flt.route else set(routes))
    lineage.listed(
        session,
        actor=_actor(principal),
        principal=principal,
        filters=vars(flt),
        cursor=cursor,
        returned=min(len(rows), PAGE),
    )
    return {
        "rows": rows[:PAGE],
        "next_cursor": rows[PAGE - 1].id if len(rows) > PAGE else None,
        "routes": offered,
        "statuses": [s.value for s in RecordStatus],
    }


def answer(session: Session, *, principal: Principal, record_id: uuid.UUID) -> dict[str, Any]:
    """One record in full: prompt and answer as stored, each source with its chunk text, the
    model lineage, policy decisions, and whether its inclusion proof verifies."""
    record = lineage.read_record(session, principal=principal, record_id=record_id)
    chunk_ids = [s.chunk_id for s in record.sources if s.chunk_id is not None]
    chunks = documents.chunks(session, principal.tenant_id, chunk_ids) if chunk_ids else {}
    texts = {cid: found.chunk.text for cid, found in chunks.items()}
    stored = session.get(AuditRecord, record_id)
    assert stored is not None  # read_record found it
    return {
        "record": record,
        "prompt": stored.prompt,
        "answer": stored.answer,
        "params": stored.params,
        "retention": (stored.retention_class, stored.retain_until),
        "erased": stored.content_salt is None,
        "texts": texts,
        "proof": _proof_status(session, principal, record_id, stored.leaf_sha256),
    }


def _proof_status(
    session: Session, principal: Principal, record_id: uuid.UUID, leaf: str | None
) -> dict[str, Any]:
    try:
        proof = integrity.inclusion(session, principal=principal, record_id=record_id, size=None)
    except ProvenantError as exc:
        return {"state": "pending", "detail": exc.message}
    root = base64.b64decode(proof["checkpoint"]["root_hash"])
    ok = leaf is not None and merkle.verify_inclusion(
        proof["log_index"],
        proof["tree_size"],
        bytes.fromhex(leaf),
        [base64.b64decode(p) for p in proof["proof"]],
        root,
    )
    return {
        "state": "verified" if ok else "failed",
        "log_index": proof["log_index"],
        "tree_size": proof["tree_size"],
        "root": root.hex(),
        "signed_at": proof["checkpoint"]["created_at"],
        "hashes": len(proof["proof"]),
    }


def documents_page(
    session: Session, *, principal: Principal, collection: str | None, cursor: uuid.UUID | None
) -> dict[str, Any]:
    page = document_service.list_documents(
        session, tenant_id=principal.tenant_id, collection=collection, limit=PAGE, cursor=cursor
    )
    return {"page": page, "collection": collection}


def document_page(
    session: Session, *, principal: Principal, document_id: uuid.UUID
) -> dict[str, Any]:
    doc = documents.document(session, principal.tenant_id, document_id)
    if doc is None:
        raise NotFound(f"no document {document_id}")
    versions = document_service.document_versions(
        session, tenant_id=principal.tenant_id, document_id=document_id
    )
    return {"document": doc, "versions": versions.data}


def integrity_page(session: Session, *, principal: Principal, origin: str) -> dict[str, Any]:
    """The latest checkpoint, the keys, and the attestation of the tenant's last 7 days."""
    end = utcnow() + timedelta(minutes=1)
    scope = Scope(principal.tenant_id, end - timedelta(days=7), end)
    try:
        latest = integrity.checkpoint(session)
    except NotFound:
        latest = None
    return {
        "latest": latest,
        "keys": integrity.jwks(session)["keys"],
        "tables": attestation.integrity(session, scope, origin),
        "since": scope.start,
    }
