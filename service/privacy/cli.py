"""``provenant erase``, ``provenant hold ...``, ``provenant retention run``."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.errors import NotFound, ProvenantError
from service.lineage.models import AuditRecord
from service.privacy import erasure, holds
from service.tenancy import repository

hold_app = typer.Typer(help="Place, list and release legal holds.", no_args_is_help=True)
retention_app = typer.Typer(help="Erase content past its retention.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
ACTOR = "cli"

TenantOpt = Annotated[str, typer.Option(help="tenant name")]
ReasonOpt = Annotated[str, typer.Option(help="why (kept in the audit log)")]


def _sessions() -> sessionmaker[Session]:
    from service.db.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(Settings().database_url))


def _tenant_id(session: Session, name: str) -> uuid.UUID:
    tenant = repository.tenant_by_name(session, name)
    if tenant is None:
        raise NotFound(f"no tenant {name!r}")
    return tenant.id


def _fail(exc: ProvenantError) -> None:
    err.print(f"error: {exc.message}", markup=False)
    raise typer.Exit(1)


def erase(
    subject: Annotated[str, typer.Option(help="end user id (the `user` field of requests)")],
    reason: ReasonOpt,
    tenant: TenantOpt = "default",
) -> None:
    """Erase the content of every record of one end user (refused if a legal hold covers any)."""
    sessions = _sessions()
    try:
        with sessions.begin() as session:
            done = erasure.erase_subject(
                session,
                tenant_id=_tenant_id(session, tenant),
                subject=subject,
                reason=reason,
                actor=ACTOR,
            )
    except ProvenantError as exc:
        _fail(exc)
    out.print(
        f"erased the content of {done.erased} record(s) of subject {subject!r} "
        f"({done.already_erased} already erased); hashes kept, the log still verifies",
        markup=False,
    )


@hold_app.command("add")
def hold_add(
    reason: ReasonOpt,
    tenant: TenantOpt = "default",
    subject: Annotated[str | None, typer.Option(help="every record of this end user")] = None,
    record: Annotated[str | None, typer.Option(help="one record id")] = None,
    route: Annotated[str | None, typer.Option(help="every record of this route")] = None,
) -> None:
    """Place a legal hold: retention and erasure leave the covered records alone."""
    given = [(s, v) for s, v in (("subject", subject), ("record", record), ("route", route)) if v]
    if len(given) != 1:
        err.print("give exactly one of --subject, --record, --route")
        raise typer.Exit(2)
    scope, value = given[0]
    try:
        with _sessions().begin() as session:
            hold = holds.place(
                session,
                tenant_id=_tenant_id(session, tenant),
                scope=scope,
                value=value,
                reason=reason,
                actor=ACTOR,
            )
            shown = holds.view(hold)
    except ProvenantError as exc:
        _fail(exc)
    out.print(f"hold {shown['id']} placed on {scope} {value!r}", markup=False)


@hold_app.command("list")
def hold_list(
    tenant: TenantOpt = "default",
    all_: Annotated[bool, typer.Option("--all", help="include released holds")] = False,
) -> None:
    """The tenant's legal holds."""
    try:
        with _sessions()() as session:
            found = [
                holds.view(h)
                for h in holds.listing(session, _tenant_id(session, tenant), active_only=not all_)
            ]
    except ProvenantError as exc:
        _fail(exc)
    for h in found:
        state = f"released {h['released_at']}" if h["released_at"] else "active"
        out.print(
            f"{h['id']}  {h['scope']:8s} {h['value']!r:40s} {state}  {h['reason']}", markup=False
        )
    if not found:
        err.print("no holds")


@hold_app.command("release")
def hold_release(hold_id: uuid.UUID, reason: ReasonOpt, tenant: TenantOpt = "default") -> None:
    """Release a legal hold (once)."""
    try:
        with _sessions().begin() as session:
            holds.release(
                session,
                tenant_id=_tenant_id(session, tenant),
                hold_id=hold_id,
                reason=reason,
                actor=ACTOR,
            )
    except ProvenantError as exc:
        _fail(exc)
    out.print(f"hold {hold_id} released")


@retention_app.command("run")
def retention_run(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    dry_run: Annotated[bool, typer.Option(help="count, erase nothing")] = False,
) -> None:
    """Erase the content of records past their retain-until time (hashes and the log stay)."""
    settings = Settings()
    sessions = _sessions()
    try:
        with sessions() as session:
            tenant_id = None if tenant is None else _tenant_id(session, tenant)
            due = select(func.count()).where(
                AuditRecord.retain_until.is_not(None), AuditRecord.content_salt.is_not(None)
            )
            if tenant_id is not None:
                due = due.where(AuditRecord.tenant_id == tenant_id)
            candidates = session.execute(due).scalar_one()
    except ProvenantError as exc:
        _fail(exc)
    with Progress(
        TextColumn("retention"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("retention", total=candidates or None)
        done = erasure.run_retention(
            sessions,
            floor_days=settings.retention_floor_days,
            actor=ACTOR,
            tenant_id=tenant_id,
            dry_run=dry_run,
            progress=lambda n: bar.advance(task, n),
        )
    verb = "would erase" if dry_run else "erased"
    out.print(
        f"{verb} the content of {done.erased} record(s) past retention (cutoff "
        f"{done.cutoff.isoformat()}; floor: nothing created after {done.floor.isoformat()})",
        markup=False,
    )
