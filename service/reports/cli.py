"""``provenant report`` and ``provenant evidence``: reports and evidence packs from the command
line, each export on the record like one pulled over HTTP (actor ``cli``)."""

from __future__ import annotations

import getpass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from service.config import Settings
from service.errors import NotFound, ProvenantError
from service.reports import render
from service.reports.kinds import Format, Kind

err = Console(stderr=True, highlight=False, soft_wrap=True)

FromOpt = Annotated[
    datetime, typer.Option("--from", help="period start, e.g. 2026-11-01 (UTC if no zone)")
]
ToOpt = Annotated[datetime, typer.Option("--to", help="period end, exclusive")]
TenantOpt = Annotated[str, typer.Option(help="tenant name")]
RouteOpt = Annotated[str | None, typer.Option(help="only this route's records")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _fail(exc: ProvenantError) -> None:
    err.print(f"error: {exc.message}", markup=False)
    raise typer.Exit(2)


def _bar(steps: int) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def report(
    kind: Annotated[Kind, typer.Argument(help="report kind")],
    start: FromOpt,
    end: ToOpt,
    tenant: TenantOpt = "default",
    route: RouteOpt = None,
    subject: Annotated[
        str | None, typer.Option(help="end user id (required for the subject report)")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="output format")] = Format.html,
    out: Annotated[
        Path | None, typer.Option(help="file to write (default: a name from kind and period)")
    ] = None,
) -> None:
    """Generate a compliance report for one tenant and period (the export is an admin event)."""
    from service.db.engine import make_engine, make_sessionmaker
    from service.reports import service
    from service.tenancy import repository

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with _bar(4) as bar, make_sessionmaker(engine).begin() as session:
            task = bar.add_task("tenant", total=4)

            def step(what: str) -> None:
                bar.update(task, description=what, advance=1)

            found = repository.tenant_by_name(session, tenant)
            if found is None:
                raise NotFound(f"no tenant {tenant!r}")
            request = service.Request(
                kind, found.id, found.name, service.utc(start), service.utc(end), route, subject
            )
            done = service.export(
                session,
                request=request,
                fmt=fmt,
                actor=_actor(),
                origin=settings.log_origin,
                progress=step,
            )
            target = out or Path(render.safe_filename(done.filename))
            target.write_bytes(done.content)
            bar.update(task, completed=4)
    except ProvenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    rows = ", ".join(f"{len(t.rows)} {t.section.key}" for t in done.report.tables)
    err.print(f"wrote {target} ({len(done.content):,} bytes, sha256 {done.sha256}): {rows}")


def evidence(
    start: FromOpt,
    end: ToOpt,
    out: Annotated[Path, typer.Option(help="the pack to write (.zip)")],
    tenant: TenantOpt = "default",
    route: RouteOpt = None,
    seal: Annotated[
        bool, typer.Option(help="seal pending entries first, so the pack proves all of them")
    ] = True,
) -> None:
    """Export an evidence pack (records, events, inclusion proofs, checkpoint, keys, reports,
    README) that `provenant verify --pack` checks offline."""
    from service.db.engine import make_engine, make_sessionmaker
    from service.integrity import signing
    from service.integrity.log import Sealer
    from service.reports import evidence as packs
    from service.reports import service
    from service.tenancy import repository

    settings = Settings()
    if out.exists():
        err.print(f"error: {out} exists; choose a new file")
        raise typer.Exit(2)
    engine = make_engine(settings.database_url)
    steps = 4 + len(Kind)
    try:
        if seal:
            path, may_create = settings.signing_key_path()
            signer = signing.Signer(
                signing.load_or_create(path, create=may_create), settings.log_origin
            )
            sealer = Sealer(engine, signer)
            sealer.register_key()
            sealer.seal()
        with _bar(steps) as bar, make_sessionmaker(engine).begin() as session:
            task = bar.add_task("tenant", total=steps)
            found = repository.tenant_by_name(session, tenant)
            if found is None:
                raise NotFound(f"no tenant {tenant!r}")
            with out.open("wb") as f:
                manifest = packs.write_pack(
                    session,
                    f,
                    tenant_id=found.id,
                    tenant=found.name,
                    start=service.utc(start),
                    end=service.utc(end),
                    actor=_actor(),
                    origin=settings.log_origin,
                    route=route,
                    progress=lambda what: bar.update(task, description=what, advance=1),
                )
    except ProvenantError as exc:
        out.unlink(missing_ok=True)
        _fail(exc)
    finally:
        engine.dispose()
    counts = manifest["counts"]
    err.print(
        f"wrote {out}: {counts['records']:,} records, {counts['events']:,} events with their "
        f"proofs against checkpoint {manifest['checkpoint']['tree_size']}; "
        f"{counts['unsealed_records']:,} unsealed. Verify with: provenant verify --pack {out}"
    )
