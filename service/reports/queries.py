"""The reports' SQL: every aggregate is a GROUP BY in the database, the same statement on SQLite
and PostgreSQL, always within one tenant and one period. Never commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.integrity.models import LogEntry
from service.lineage.models import AdminEvent, AuditRecord, PolicyDecision, Retrieval
from service.privacy.models import LegalHold
from service.provenance.models import ModelSnapshot

SOURCED_KINDS = ("rag", "extractive", "rag-passthrough")
VIOLATIONS = ("flagged", "blocked", "redacted")


@dataclass(frozen=True)
class Scope:
    """Whose records and which: one tenant, a period [start, end), optional route and subject."""

    tenant_id: uuid.UUID
    start: datetime
    end: datetime
    route: str | None = None
    subject: str | None = None

    def records(self) -> list[ColumnElement[bool]]:
        """WHERE clauses selecting the scope's audit records."""
        out = [
            AuditRecord.tenant_id == self.tenant_id,
            AuditRecord.created_at >= self.start,
            AuditRecord.created_at < self.end,
        ]
        if self.route is not None:
            out.append(AuditRecord.route == self.route)
        if self.subject is not None:
            out.append(AuditRecord.end_user == self.subject)
        return out


def day(session: Session, column: Any) -> ColumnElement[str]:
    """The UTC date of a timestamp column as ``YYYY-MM-DD`` (SQLite keeps UTC text)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def activity(session: Session, scope: Scope) -> list[Any]:
    """One scan: records by day, route, model and status, with latency and token sums.
    The rollups (by day, by route, by status) are sums over these few groups."""
    d = day(session, AuditRecord.created_at).label("day")
    model = func.coalesce(AuditRecord.response_model, AuditRecord.upstream_model, "").label("model")
    stmt = (
        select(
            d,
            AuditRecord.route,
            AuditRecord.route_kind,
            model,
            AuditRecord.status,
            func.count().label("records"),
            func.sum(AuditRecord.latency_ms).label("latency_sum"),
            func.max(AuditRecord.latency_ms).label("latency_max"),
            func.sum(AuditRecord.prompt_tokens).label("prompt_tokens"),
            func.sum(AuditRecord.completion_tokens).label("completion_tokens"),
            func.sum(AuditRecord.total_tokens).label("total_tokens"),
        )
        .where(*scope.records())
        .group_by(d, AuditRecord.route, AuditRecord.route_kind, model, AuditRecord.status)
    )
    return list(session.execute(stmt).mappings())


def registered_models(session: Session, scope: Scope) -> list[Any]:
    """Per model snapshot: the scope's records, answers, flagged, blocked, stale, first/last."""
    flagged = exists().where(
        PolicyDecision.record_id == AuditRecord.id, PolicyDecision.outcome == "flagged"
    )
    usage = (
        select(
            AuditRecord.model_snapshot_id.label("snapshot_id"),
            func.count().label("records"),
            _count_if(AuditRecord.status == "ok").label("answers"),
            _count_if(flagged).label("flagged"),
            _count_if(AuditRecord.status == "policy_blocked").label("blocked"),
            _count_if(AuditRecord.lineage_stale.is_(True)).label("stale"),
            func.min(AuditRecord.created_at).label("first_used_at"),
            func.max(AuditRecord.created_at).label("last_used_at"),
        )
        .where(*scope.records(), AuditRecord.model_snapshot_id.is_not(None))
        .group_by(AuditRecord.model_snapshot_id)
        .subquery()
    )
    stmt = (
        select(ModelSnapshot, usage)
        .join(usage, usage.c.snapshot_id == ModelSnapshot.id)
        .order_by(ModelSnapshot.name, usage.c.first_used_at)
    )
    return list(session.execute(stmt).mappings())


def unregistered_models(session: Session, scope: Scope) -> list[Any]:
    """Routes without a registry link: records per route, upstream and response model."""
    stmt = (
        select(
            AuditRecord.route,
            AuditRecord.upstream_model,
            AuditRecord.response_model,
            func.min(AuditRecord.created_at).label("first_used_at"),
            func.max(AuditRecord.created_at).label("last_used_at"),
            func.count().label("records"),
            _count_if(AuditRecord.status == "ok").label("answers"),
        )
        .where(*scope.records(), AuditRecord.model_snapshot_id.is_(None))
        .group_by(AuditRecord.route, AuditRecord.upstream_model, AuditRecord.response_model)
        .order_by(AuditRecord.route, AuditRecord.upstream_model, AuditRecord.response_model)
    )
    return list(session.execute(stmt).mappings())


def _in_scope(scope: Scope) -> Select[Any]:
    return select(AuditRecord.id).where(*scope.records())


def version_usage(session: Session, scope: Scope) -> list[Any]:
    """Per document version given to the scope's answers: retrievals, citations, answers
    citing it, and how often it was given while already superseded."""
    usage = (
        select(
            Retrieval.document_version_id.label("version_id"),
            func.count().label("retrievals"),
            _count_if(Retrieval.cited.is_(True)).label("citations"),
            func.count(func.distinct(case((Retrieval.cited.is_(True), Retrieval.record_id)))).label(
                "answers_citing"
            ),
            _count_if(Retrieval.superseded.is_(True)).label("given_while_superseded"),
        )
        .join(AuditRecord, AuditRecord.id == Retrieval.record_id)
        .where(*scope.records(), Retrieval.document_version_id.is_not(None))
        .group_by(Retrieval.document_version_id)
        .subquery()
    )
    stmt = (
        select(
            Document.collection,
            Document.source_uri,
            DocumentVersion.title,
            DocumentVersion.version,
            DocumentVersion.content_sha256,
            DocumentSupersession.superseded_at,
            usage,
        )
        .join(DocumentVersion, DocumentVersion.id == usage.c.version_id)
        .join(Document, Document.id == DocumentVersion.document_id)
        .outerjoin(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
        .order_by(Document.collection, Document.source_uri, DocumentVersion.version)
    )
    return list(session.execute(stmt).mappings())


def sourced_summary(session: Session, scope: Scope) -> Any:
    """Counts over the scope's sourced answers (rag, extractive, rag-passthrough), from one
    per-record aggregate of their retrievals: answers with no source, citing nothing, with an
    unverified source, citing a version superseded at answer time, or superseded since."""
    cited = Retrieval.cited.is_(True)
    superseded_now = DocumentSupersession.version_id.is_not(None)
    per_record = (
        select(
            Retrieval.record_id.label("record_id"),
            _count_if(cited).label("cited"),
            _count_if(Retrieval.verified.is_not(True)).label("unverified"),
            _count_if(and_(cited, Retrieval.superseded.is_(True))).label("stale"),
            _count_if(and_(cited, superseded_now, Retrieval.superseded.is_not(True))).label(
                "since"
            ),
        )
        .join(AuditRecord, AuditRecord.id == Retrieval.record_id)
        .outerjoin(
            DocumentSupersession,
            DocumentSupersession.version_id == Retrieval.document_version_id,
        )
        .where(*scope.records(), AuditRecord.route_kind.in_(SOURCED_KINDS))
        .group_by(Retrieval.record_id)
        .subquery()
    )
    ok = AuditRecord.status == "ok"
    stmt = (
        select(
            func.count().label("sourced_records"),
            _count_if(ok).label("sourced_answers"),
            _count_if(and_(ok, per_record.c.record_id.is_(None))).label("without_sources"),
            _count_if(and_(ok, func.coalesce(per_record.c.cited, 0) == 0)).label("citing_nothing"),
            _count_if(per_record.c.unverified > 0).label("unverified"),
            _count_if(per_record.c.stale > 0).label("superseded_at_answer_time"),
            _count_if(per_record.c.since > 0).label("superseded_since"),
        )
        .select_from(AuditRecord)
        .outerjoin(per_record, per_record.c.record_id == AuditRecord.id)
        .where(*scope.records(), AuditRecord.route_kind.in_(SOURCED_KINDS))
    )
    return session.execute(stmt).one()


def superseded_citations(session: Session, scope: Scope, limit: int) -> list[Any]:
    """Cited sources whose version was superseded before the answer or since."""
    stmt = (
        select(
            AuditRecord.id.label("record_id"),
            AuditRecord.created_at,
            AuditRecord.route,
            DocumentVersion.title,
            DocumentVersion.version,
            DocumentSupersession.superseded_at,
            Retrieval.superseded.label("at_answer_time"),
        )
        .join(Retrieval, Retrieval.record_id == AuditRecord.id)
        .join(DocumentVersion, DocumentVersion.id == Retrieval.document_version_id)
        .join(DocumentSupersession, DocumentSupersession.version_id == DocumentVersion.id)
        .where(*scope.records(), Retrieval.cited.is_(True))
        .order_by(AuditRecord.id, Retrieval.rank)
        .limit(limit)
    )
    return list(session.execute(stmt).mappings())


def uncited_answers(session: Session, scope: Scope, limit: int) -> list[Any]:
    """Sourced answers (status ok) that cite none of their sources, with the number given."""
    given = (
        select(func.count())
        .where(Retrieval.record_id == AuditRecord.id)
        .correlate(AuditRecord)
        .scalar_subquery()
    )
    cited = exists().where(Retrieval.record_id == AuditRecord.id, Retrieval.cited.is_(True))
    stmt = (
        select(
            AuditRecord.id.label("record_id"),
            AuditRecord.created_at,
            AuditRecord.route,
            AuditRecord.status,
            given.label("sources"),
        )
        .where(
            *scope.records(),
            AuditRecord.route_kind.in_(SOURCED_KINDS),
            AuditRecord.status == "ok",
            ~cited,
        )
        .order_by(AuditRecord.id)
        .limit(limit)
    )
    return list(session.execute(stmt).mappings())


def violations_by_policy(session: Session, scope: Scope) -> list[Any]:
    """Non-pass decisions grouped by policy, stage, outcome, severity and framework tags."""
    severity = PolicyDecision.detail["severity"].as_string().label("severity")
    frameworks = PolicyDecision.detail["frameworks"].label("frameworks")
    stmt = (
        select(
            PolicyDecision.policy_id,
            PolicyDecision.stage,
            PolicyDecision.outcome,
            severity,
            frameworks,
            func.count().label("records"),
        )
        .join(AuditRecord, AuditRecord.id == PolicyDecision.record_id)
        .where(*scope.records(), PolicyDecision.outcome.in_(VIOLATIONS))
        .group_by(
            PolicyDecision.policy_id,
            PolicyDecision.stage,
            PolicyDecision.outcome,
            severity,
            frameworks,
        )
        .order_by(PolicyDecision.outcome, PolicyDecision.policy_id, PolicyDecision.stage)
    )
    return list(session.execute(stmt).mappings())


def violation_list(session: Session, scope: Scope, limit: int) -> list[Any]:
    """Each non-pass decision with its record."""
    stmt = (
        select(
            AuditRecord.id.label("record_id"),
            AuditRecord.created_at,
            AuditRecord.route,
            AuditRecord.status,
            PolicyDecision.policy_id,
            PolicyDecision.stage,
            PolicyDecision.outcome,
            PolicyDecision.detail,
        )
        .join(AuditRecord, AuditRecord.id == PolicyDecision.record_id)
        .where(*scope.records(), PolicyDecision.outcome.in_(VIOLATIONS))
        .order_by(AuditRecord.id, PolicyDecision.stage.desc(), PolicyDecision.policy_id)
        .limit(limit)
    )
    return list(session.execute(stmt).mappings())


def logged_records(
    session: Session, scope: Scope, *columns: Any, batch: int = 1_000
) -> Iterator[Sequence[Any]]:
    """The scope's records with their log index (None until sealed) and ``columns`` of their
    log entry, in id order, a batch at a time (keyset pages: memory stays flat for any
    period)."""
    after: uuid.UUID | None = None
    while True:
        stmt = (
            select(AuditRecord, LogEntry.idx, *columns)
            .outerjoin(LogEntry, LogEntry.entry_id == AuditRecord.id)
            .where(*scope.records())
            .order_by(AuditRecord.id)
            .limit(batch)
        )
        if after is not None:
            stmt = stmt.where(AuditRecord.id > after)
        rows = session.execute(stmt).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0].id


def record_page(session: Session, scope: Scope, limit: int) -> list[Any]:
    """The scope's records in log order (oldest first) with their log index and snapshot."""
    stmt = (
        select(
            AuditRecord,
            LogEntry.idx.label("log_index"),
            ModelSnapshot.name.label("model_name"),
            ModelSnapshot.version.label("model_version"),
        )
        .outerjoin(LogEntry, LogEntry.entry_id == AuditRecord.id)
        .outerjoin(ModelSnapshot, ModelSnapshot.id == AuditRecord.model_snapshot_id)
        .where(*scope.records())
        .order_by(AuditRecord.id)
        .limit(limit)
    )
    return list(session.execute(stmt).mappings())


def sources_of(session: Session, record_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """The retrieved sources of these records (collection, title, version, page, cited)."""
    out: dict[uuid.UUID, list[Any]] = {}
    for start in range(0, len(record_ids), 500):
        stmt = (
            select(
                Retrieval.record_id,
                Retrieval.rank,
                Retrieval.cited,
                Retrieval.source_ref,
                Document.collection,
                Document.source_uri,
                DocumentVersion.title,
                DocumentVersion.version,
                Chunk.page,
            )
            .outerjoin(Chunk, Chunk.id == Retrieval.chunk_id)
            .outerjoin(DocumentVersion, DocumentVersion.id == Retrieval.document_version_id)
            .outerjoin(Document, Document.id == DocumentVersion.document_id)
            .where(Retrieval.record_id.in_(record_ids[start : start + 500]))
            .order_by(Retrieval.record_id, Retrieval.rank)
        )
        for row in session.execute(stmt).mappings():
            out.setdefault(row["record_id"], []).append(row)
    return out


def decisions_of(session: Session, record_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """The non-pass policy decisions of these records."""
    out: dict[uuid.UUID, list[Any]] = {}
    for start in range(0, len(record_ids), 500):
        stmt = (
            select(PolicyDecision)
            .where(
                PolicyDecision.record_id.in_(record_ids[start : start + 500]),
                PolicyDecision.outcome.not_in(("pass", "skipped")),
            )
            .order_by(PolicyDecision.record_id, PolicyDecision.stage.desc())
        )
        for d in session.scalars(stmt):
            out.setdefault(d.record_id, []).append(d)
    return out


def retention_classes(session: Session, scope: Scope, now: datetime) -> list[Any]:
    """Records by retention class: content present or erased, due, retain-until range."""
    present = AuditRecord.content_salt.is_not(None)
    stmt = (
        select(
            AuditRecord.retention_class,
            func.count().label("records"),
            _count_if(present).label("content_present"),
            _count_if(~present).label("content_erased"),
            _count_if(and_(present, AuditRecord.retain_until < now)).label("due"),
            func.min(AuditRecord.retain_until).label("earliest_retain_until"),
            func.max(AuditRecord.retain_until).label("latest_retain_until"),
        )
        .where(*scope.records())
        .group_by(AuditRecord.retention_class)
        .order_by(AuditRecord.retention_class)
    )
    return list(session.execute(stmt).mappings())


def holds(session: Session, scope: Scope, limit: int) -> list[LegalHold]:
    """The tenant's holds active at some point of the period (placed before its end, not
    released before its start)."""
    stmt = select(LegalHold).where(
        LegalHold.tenant_id == scope.tenant_id,
        LegalHold.created_at < scope.end,
        or_(LegalHold.released_at.is_(None), LegalHold.released_at >= scope.start),
    )
    if scope.subject is not None:
        stmt = stmt.where(LegalHold.subject == scope.subject)
    return list(session.scalars(stmt.order_by(LegalHold.created_at).limit(limit)))


def events(
    session: Session,
    scope: Scope,
    actions: tuple[str, ...],
    limit: int,
    *,
    targets: list[str] | None = None,
) -> list[Any]:
    """The tenant's admin events of these actions in the period (on these targets only)."""
    stmt = select(AdminEvent).where(
        AdminEvent.tenant_id == scope.tenant_id,
        AdminEvent.created_at >= scope.start,
        AdminEvent.created_at < scope.end,
        AdminEvent.action.in_(actions),
    )
    if targets is not None:
        stmt = stmt.where(AdminEvent.target.in_(targets))
    return list(session.scalars(stmt.order_by(AdminEvent.id).limit(limit)))


def subject_events(session: Session, scope: Scope, limit: int) -> list[Any]:
    """The period's erasures of the scope's subject and the placing and release of legal holds
    on that subject (found through the holds, so a release, which names only its hold, is
    among them); filtered in SQL, so other subjects' events never crowd them out."""
    holds = session.scalars(
        select(LegalHold.id).where(
            LegalHold.tenant_id == scope.tenant_id, LegalHold.subject == scope.subject
        )
    )
    targets = [f"subject:{scope.subject}", *(f"hold:{h}" for h in holds)]
    actions = ("erasure", "hold.placed", "hold.released")
    return events(session, scope, actions, limit, targets=targets)


def record_counts(session: Session, scope: Scope) -> Any:
    """Records in scope, and how many of them have a log entry."""
    stmt = (
        select(
            func.count().label("records"),
            func.count(LogEntry.idx).label("sealed"),
            func.max(LogEntry.idx).label("max_index"),
        )
        .select_from(AuditRecord)
        .outerjoin(LogEntry, LogEntry.entry_id == AuditRecord.id)
        .where(*scope.records())
    )
    return session.execute(stmt).mappings().one()
