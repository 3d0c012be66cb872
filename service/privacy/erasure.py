"""Erasure of a data subject's content, and the retention run: both null the content columns
and their salt, keep every hash, and log what they erased, so the log still verifies and nothing
stored links back to the erased text (its hashes were salted)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.config import Settings
from service.db.base import utcnow
from service.errors import InvalidRequest, LegalHoldActive
from service.lineage.events import record_event
from service.lineage.models import AuditRecord, IdempotencyKey, IdempotentReplay
from service.privacy import holds
from service.privacy.models import HoldScope, LegalHold

# what erasure nulls (the PostgreSQL trigger allows exactly these to become NULL)
ERASED = {
    "prompt": None,
    "prompt_sha256": None,
    "answer": None,
    "answer_sha256": None,
    "choices": None,
    "content_salt": None,
}
log = logging.getLogger("provenant.retention")
_BATCH = 500
_RETENTION_LOCK = 0x70766E74524554  # "pvntRET": one retention run at a time on PostgreSQL


def _null_content(session: Session, ids: Sequence[uuid.UUID]) -> None:
    """Erase the records' content, and the idempotent replays of their answers with it."""
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        session.execute(update(AuditRecord).where(AuditRecord.id.in_(chunk)).values(**ERASED))
        session.execute(
            update(IdempotentReplay)
            .where(IdempotentReplay.record_id.in_(chunk), IdempotentReplay.response.is_not(None))
            .values(response=None)
        )


def purge_idempotency(
    session: Session, *, now: datetime, tenant_id: uuid.UUID | None = None
) -> int:
    """Delete expired idempotency keys and the answers kept to replay them (content: a replay
    outlives neither its key nor its record's content). Returns how many keys went."""
    which = IdempotencyKey.expires_at <= now
    if tenant_id is not None:
        which = which & (IdempotencyKey.tenant_id == tenant_id)
    session.execute(
        delete(IdempotentReplay)
        .where(IdempotentReplay.record_id.in_(select(IdempotencyKey.record_id).where(which)))
        .execution_options(synchronize_session=False)
    )
    gone = session.execute(
        delete(IdempotencyKey).where(which).execution_options(synchronize_session=False)
    )
    return int(gone.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Erasure:
    subject: str
    erased: int
    already_erased: int


def erase_subject(
    session: Session, *, tenant_id: uuid.UUID, subject: str, reason: str, actor: str
) -> Erasure:
    """Null the content of every record of one end user of the tenant, unless a legal hold
    covers any of them (then refuse, naming the holds). The caller commits."""
    if not subject or len(subject) > 256:
        raise InvalidRequest("subject: the end user id (1 to 256 characters)", param="subject")
    if not reason.strip():
        raise InvalidRequest("an erasure needs a reason", param="reason")
    rows = session.execute(
        select(AuditRecord.id, AuditRecord.route, AuditRecord.content_salt).where(
            AuditRecord.tenant_id == tenant_id, AuditRecord.end_user == subject
        )
    ).all()
    held = session.scalars(
        select(LegalHold).where(
            LegalHold.tenant_id == tenant_id,
            LegalHold.released_at.is_(None),
            (
                (LegalHold.scope == HoldScope.subject.value) & (LegalHold.subject == subject)
                | (LegalHold.scope == HoldScope.record.value)
                & LegalHold.record_id.in_([r.id for r in rows] or [uuid.UUID(int=0)])
                | (LegalHold.scope == HoldScope.route.value)
                & LegalHold.route.in_({r.route for r in rows} or {""})
            ),
        )
    ).all()
    if held:
        names = ", ".join(f"{h.id} ({h.scope}: {holds.view(h)['value']})" for h in held)
        raise LegalHoldActive(
            f"erasure refused: {len(held)} legal hold(s) cover records of this subject: {names}"
        )
    ids = [r.id for r in rows if r.content_salt is not None]
    _null_content(session, ids)
    record_event(
        session,
        actor=actor,
        action="erasure",
        tenant_id=tenant_id,
        target=f"subject:{subject}",
        detail={"reason": reason[:2000], "records": [str(i) for i in ids]},
    )
    return Erasure(subject, len(ids), len(rows) - len(ids))


@dataclass(frozen=True)
class RetentionRun:
    erased: int
    cutoff: datetime
    floor: datetime


def run_retention(
    session_factory: Callable[[], Session],
    *,
    floor_days: int,
    actor: str,
    tenant_id: uuid.UUID | None = None,
    now: datetime | None = None,
    batch: int = 1000,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RetentionRun:
    """Erase the content of records past their retain-until time, never one younger than the
    floor (``floor_days``) nor one under a legal hold. One transaction and one admin event
    (per tenant, listing the records) per batch; on PostgreSQL one process at a time."""
    now = now or utcnow()
    floor = now - timedelta(days=floor_days)
    erased = 0
    if not dry_run:
        with session_factory() as session, session.begin():
            purged = purge_idempotency(session, now=now, tenant_id=tenant_id)
        if purged:
            log.info("retention deleted %d expired idempotency key(s)", purged)
    while True:
        with session_factory() as session, session.begin():
            if (
                session.get_bind().dialect.name == "postgresql"
                and not session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _RETENTION_LOCK}
                ).scalar_one()
            ):
                break  # another process is running retention now
            stmt = (
                select(AuditRecord.id, AuditRecord.tenant_id, AuditRecord.retention_class)
                .where(
                    AuditRecord.retain_until <= now,
                    AuditRecord.created_at <= floor,
                    AuditRecord.content_salt.is_not(None),
                    ~holds.covers(),
                )
                .order_by(AuditRecord.id)
                .limit(batch)
            )
            if tenant_id is not None:
                stmt = stmt.where(AuditRecord.tenant_id == tenant_id)
            if dry_run:
                stmt = stmt.offset(erased)
            rows = session.execute(stmt).all()
            if not rows:
                break
            if not dry_run:
                _null_content(session, [r.id for r in rows])
                by_tenant: dict[uuid.UUID, list[Any]] = {}
                for r in rows:
                    by_tenant.setdefault(r.tenant_id, []).append(r)
                for tid, recs in by_tenant.items():
                    record_event(
                        session,
                        actor=actor,
                        action="retention.erased",
                        tenant_id=tid,
                        target=f"retain_until<={now.isoformat()}",
                        detail={
                            "classes": sorted({r.retention_class for r in recs}),
                            "records": [str(r.id) for r in recs],
                        },
                    )
        erased += len(rows)
        if progress is not None:
            progress(len(rows))
        if len(rows) < batch:
            break
    return RetentionRun(erased, now, floor)


async def retain_periodically(sessions: sessionmaker[Session], settings: Settings) -> None:
    """The gateway's retention job: every ``retention_interval_s`` (0: never)."""
    interval = settings.retention_interval_s
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            done = await run_in_threadpool(
                run_retention,
                sessions,
                floor_days=settings.retention_floor_days,
                actor="gateway:retention",
            )
        except SQLAlchemyError as exc:
            log.warning("retention run failed (will retry): %s", type(exc).__name__)
            continue
        if done.erased:
            log.info("retention erased the content of %d record(s)", done.erased)
