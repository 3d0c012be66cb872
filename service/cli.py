"""The ``provenant`` command."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import ProvenantError

app = typer.Typer(
    help="Provenant: audit and provenance gateway for LLM answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
models_app = typer.Typer(help="Model registry (MLflow) links of the routes.", no_args_is_help=True)
app.add_typer(models_app, name="models")
err = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


def _fail(exc: ProvenantError) -> None:
    err.print("[red]error:[/red] ", end="")
    err.print(exc.message, markup=False, soft_wrap=True)  # unwrapped: paths stay greppable
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (PROVENANT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (PROVENANT_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Start the gateway."""
    import uvicorn

    from service.config import load_routes
    from service.policies.service import bundle_path, load_engine
    from service.telemetry.tracing import exporter_names

    settings = _settings()
    try:
        routes = load_routes(settings.config)
        exporter_names(os.environ)
    except ProvenantError as exc:
        _fail(exc)
    err.print(f"routes from {settings.config}: {', '.join(r.name for r in routes.routes)}")
    policy_file = bundle_path(settings.policy_bundle)
    try:
        engine = load_engine(policy_file)
    except ProvenantError as exc:
        _fail(exc)
    if engine is None:
        err.print("policies: none (no bundle configured, policies/default.yaml absent)")
    else:
        err.print(
            f"policies: {policy_file} (bundle {engine.bundle.bundle}, sha256 {engine.sha256})"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _metrics_shared_by(workers):
        uvicorn.run(
            "service.app:create_app_from_env",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=30,
        )


@contextlib.contextmanager
def _metrics_shared_by(workers: int) -> Iterator[None]:
    """With several worker processes, let each scrape of ``/metrics`` count all of them:
    prometheus-client's multiprocess mode, in a fresh directory removed at exit (unless the
    operator set ``PROMETHEUS_MULTIPROC_DIR`` already)."""
    if workers == 1 or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        yield
        return
    directory = tempfile.mkdtemp(prefix="provenant-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # inherited by the spawned workers
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)


@app.command()
def migrate() -> None:
    """Apply every Alembic migration to the configured database (PROVENANT_DATABASE_URL)."""
    from service.db.migrate import upgrade

    upgrade(_settings().database_url)
    err.print("database is at the latest schema")


@app.command("demo-upstream")
def demo_upstream(
    host: str = "127.0.0.1",
    port: int = 8081,
    delay_ms: Annotated[float, typer.Option(help="added latency per answer")] = 0.0,
) -> None:
    """Serve the bundled OpenAI-protocol demo upstream (echoes the last user message)."""
    from service.demo_upstream import run

    err.print(f"demo upstream on http://{host}:{port}/v1")
    run(host, port, delay_ms)


def _session() -> Session:
    from service.db.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(_settings().database_url))()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name (created if new)")],
    role: Annotated[str, typer.Option(help="app, auditor, admin or metrics")],
    label: Annotated[str | None, typer.Option(help="a note for humans")] = None,
) -> None:
    """Create a key. The key is printed once, alone on the last line of stdout."""
    from service.tenancy.service import create_key

    with _session() as session:
        try:
            issued = create_key(session, tenant=tenant, role=role, label=label)
        except ProvenantError as exc:
            _fail(exc)
        session.commit()
    err.print(
        f"created {issued.role.value} key {issued.prefix} for tenant {issued.tenant}; "
        "store it now, it is not shown again"
    )
    print(issued.key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix, tenant, role, label, created, revoked); never the keys themselves."""
    from service.tenancy import repository

    table = Table("prefix", "tenant", "role", "label", "created", "revoked")
    with _session() as session:
        for key, tenant in repository.keys(session):
            table.add_row(
                key.prefix,
                tenant.name,
                key.role,
                key.label or "",
                key.created_at.isoformat(timespec="seconds"),
                key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
            )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke the key whose prefix starts with PREFIX (at least 4 characters)."""
    from service.tenancy.service import revoke_key

    with _session() as session:
        try:
            key = revoke_key(session, prefix=prefix)
        except ProvenantError as exc:
            _fail(exc)
        session.commit()
    err.print(f"revoked {key.prefix}; running gateways refuse it within the key cache TTL")


@keys_app.command("bootstrap")
def keys_bootstrap() -> None:
    """First start: create the default tenant's app and auditor keys (only once)."""
    from service.tenancy.service import bootstrap_dev_keys

    settings = _settings()
    keys_file = settings.data_dir / "dev-keys.txt"
    with _session() as session:
        issued = bootstrap_dev_keys(session, keys_file=keys_file)
        session.commit()
    if not issued:
        err.print(f"default tenant already has keys (see {keys_file} if you kept it)")
        return
    print(
        "First start: API keys for tenant 'default' (also in "
        f"{keys_file}, mode 0600). They are not shown again."
    )
    for k in issued:
        print(f"  {k.role.value:8s} {k.key}")


def _integrity_commands() -> None:
    from service.integrity import cli as integrity

    app.command()(integrity.seal)
    app.command()(integrity.verify)
    app.command("verify-receipt")(integrity.verify_receipt)
    app.command()(integrity.pack)


_integrity_commands()


def _policy_commands() -> None:
    from service.policies import cli as policies

    app.add_typer(policies.app, name="policies")


_policy_commands()


def _privacy_commands() -> None:
    from service.privacy import cli as privacy

    app.command()(privacy.erase)
    app.add_typer(privacy.hold_app, name="hold")
    app.add_typer(privacy.retention_app, name="retention")


_privacy_commands()


def _models_commands() -> None:
    from service.provenance import cli as models

    models_app.command("sync")(models.sync)


_models_commands()


def _document_commands() -> None:
    from service.documents import cli as documents

    app.command()(documents.ingest)
    app.command()(documents.reindex)


_document_commands()


def _report_commands() -> None:
    from service.reports import cli as reports

    app.command()(reports.report)
    app.command()(reports.evidence)


_report_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
