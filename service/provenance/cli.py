"""``provenant models sync``: resolve every registry-linked route now and store its snapshot."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from service.config import OpenAIRoute, Settings, load_routes
from service.errors import ProvenantError

err = Console(stderr=True)


def sync(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per route")] = False,
) -> None:
    """Resolve every registry-linked route in MLflow now and store its snapshot.

    Running gateways pick up a changed version within their cache TTL by themselves; this
    checks the links (exit status 1 if one does not resolve) and records the snapshots ahead of
    the first answer, e.g. right after a promotion in MLflow or as a deploy step.
    """
    from service.db.base import utcnow
    from service.db.engine import make_engine
    from service.provenance import snapshots
    from service.provenance.registry import MlflowRegistry, configure_client

    settings = Settings()
    try:
        routes = load_routes(settings.config)
    except ProvenantError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    linked = [r for r in routes.routes if isinstance(r, OpenAIRoute) and r.registry is not None]
    if not linked:
        err.print(f"no route in {settings.config} has a registry: block")
        return
    configure_client(settings.mlflow_request_timeout_s, settings.mlflow_max_retries)
    engine = make_engine(settings.database_url)
    registries: dict[str, MlflowRegistry] = {}
    results: list[dict[str, Any]] = []
    started = utcnow()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("resolving routes in MLflow", total=len(linked))
            for route in linked:
                assert route.registry is not None
                uri = route.registry.tracking_uri or settings.mlflow_tracking_uri
                registry = registries.setdefault(uri, MlflowRegistry(uri))
                result: dict[str, Any] = {"route": route.name, "model": route.registry.model}
                try:
                    resolution = registry.resolve(route.registry, route.upstream_model_from)
                    stored = snapshots.store(engine, resolution.content)
                except ProvenantError as exc:
                    result["error"] = exc.message
                else:
                    result |= {
                        "alias": route.registry.alias,
                        "version": stored.content.get("version"),
                        "run_id": stored.content.get("run_id"),
                        "upstream_model": resolution.upstream_model,
                        "snapshot_id": str(stored.id),
                        "new": stored.resolved_at >= started,
                    }
                results.append(result)
                progress.advance(task)
    finally:
        engine.dispose()
    _print(results, as_json)
    if any("error" in r for r in results):
        raise typer.Exit(1)


def _print(results: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for r in results:
            print(orjson.dumps(r).decode())
        return
    table = Table("route", "model", "alias", "version", "run", "snapshot", "")
    for r in results:
        if "error" in r:
            table.add_row(r["route"], r["model"], "", "", "", "", f"[red]{r['error']}[/red]")
            continue
        table.add_row(
            r["route"],
            r["model"],
            r["alias"] or "",
            r["version"] or "",
            r["run_id"] or "",
            r["snapshot_id"],
            "new" if r["new"] else "known",
        )
    Console().print(table)
