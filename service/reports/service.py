"""Generating a report: build it for one tenant and period, render it, and put the export on
the record (an admin event naming who pulled which report, its filters and the SHA-256 of the
bytes they received)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import __version__
from service.db.base import utcnow
from service.errors import InvalidRequest
from service.integrity.models import Checkpoint
from service.lineage.events import record_event
from service.reports import attestation, builders
from service.reports.kinds import MEDIA_TYPES, TITLES, Format, Kind
from service.reports.model import Report
from service.reports.queries import Scope
from service.reports.render import render

Progress = Callable[[str], None]
MAX_PERIOD_DAYS = 3660


@dataclass(frozen=True)
class Request:
    """What was asked for: the kind, the tenant (id and name), the period and the filters."""

    kind: Kind
    tenant_id: uuid.UUID
    tenant: str
    start: datetime
    end: datetime
    route: str | None = None
    subject: str | None = None

    def scope(self) -> Scope:
        return Scope(self.tenant_id, self.start, self.end, self.route, self.subject)


@dataclass(frozen=True)
class Export:
    """A rendered report."""

    report: Report
    content: bytes
    media_type: str
    filename: str
    sha256: str


def utc(value: datetime) -> datetime:
    """A timestamp without a zone is taken as UTC (one out of range is a bad request)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidRequest("a timestamp is out of range", param="from") from exc


def validate(kind: Kind, start: datetime, end: datetime, subject: str | None) -> None:
    """Refuse a period that is empty, reversed or absurdly long, and a subject report without
    its subject."""
    if end <= start:
        raise InvalidRequest("the period is empty: 'to' must be after 'from'", param="to")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise InvalidRequest(f"a report covers at most {MAX_PERIOD_DAYS} days", param="from")
    if kind is Kind.subject and not subject:
        raise InvalidRequest("a subject report needs 'subject' (the end user id)", param="subject")


def latest_checkpoint(session: Session) -> Checkpoint | None:
    """The latest signed checkpoint."""
    return session.scalars(select(Checkpoint).order_by(Checkpoint.tree_size.desc())).first()


def checkpoint_header(cp: Checkpoint | None) -> dict[str, Any] | None:
    """How a report's header names the checkpoint it was generated against."""
    if cp is None:
        return None
    return {
        "tree_size": cp.tree_size,
        "root_sha256": cp.root_sha256,
        "key_id": cp.key_id,
        "created_at": cp.created_at.isoformat(),
        "note": cp.note,
    }


def build(
    session: Session,
    *,
    request: Request,
    actor: str,
    origin: str,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
) -> Report:
    """Build one report (no rendering, no event), against ``checkpoint`` (default: the latest;
    an evidence pack passes the one its proofs are for)."""
    validate(request.kind, request.start, request.end, request.subject)
    step = progress or (lambda _: None)
    step("checkpoint")
    header = {
        "period": {"from": request.start.isoformat(), "to": request.end.isoformat()},
        "filters": {"route": request.route, "subject": request.subject},
        "tenant": {"id": str(request.tenant_id), "name": request.tenant},
        "generated_at": utcnow().isoformat(),
        "generated_by": actor,
        "generator": f"provenant {__version__}",
        "checkpoint": checkpoint_header(checkpoint or latest_checkpoint(session)),
    }
    report = Report(request.kind, TITLES[request.kind], header)
    scope = request.scope()
    step(request.kind.value)
    if request.kind is Kind.integrity:
        report.tables = attestation.integrity(session, scope, origin)
    elif request.kind is Kind.retention:
        report.tables, report.charts = builders.retention(session, scope, utcnow())
    else:
        build_kind = {
            Kind.activity: builders.activity,
            Kind.model_inventory: builders.model_inventory,
            Kind.source_usage: builders.source_usage,
            Kind.policy_violations: builders.policy_violations,
            Kind.ai_act_log: builders.ai_act_log,
            Kind.subject: builders.subject,
        }[request.kind]
        report.tables, report.charts = build_kind(session, scope)
    return report


def export(
    session: Session,
    *,
    request: Request,
    fmt: Format,
    actor: str,
    origin: str,
    progress: Progress | None = None,
) -> Export:
    """Build and render a report, and record the export (``report.exported``) in the caller's
    transaction."""
    report = build(session, request=request, actor=actor, origin=origin, progress=progress)
    if progress is not None:
        progress(f"rendering {fmt.value}")
    content = render(report, fmt)
    sha = hashlib.sha256(content).hexdigest()
    record_event(
        session,
        actor=actor,
        action="report.exported",
        tenant_id=request.tenant_id,
        target=f"report:{request.kind.value}",
        detail={
            "kind": request.kind.value,
            "format": fmt.value,
            "from": request.start.isoformat(),
            "to": request.end.isoformat(),
            "filters": {"route": request.route, "subject": request.subject},
            "rows": {t.section.key: len(t.rows) for t in report.tables},
            "checkpoint": (report.header["checkpoint"] or {}).get("tree_size"),
            "sha256": sha,
            "bytes": len(content),
        },
    )
    day = f"{request.start:%Y%m%d}-{request.end:%Y%m%d}"
    return Export(
        report,
        content,
        MEDIA_TYPES[fmt],
        f"provenant-{request.kind.value}-{request.tenant}-{day}.{fmt.value}",
        sha,
    )
