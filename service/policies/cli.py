"""``provenant policies``: validate a bundle file, explain a policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from service.config import Settings
from service.errors import ProvenantError
from service.policies.bundle import describe, load_bundle, problems
from service.policies.service import bundle_path

app = typer.Typer(help="Validate and explain policy bundles.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def validate(path: Annotated[list[Path], typer.Argument(help="bundle file(s)")]) -> None:
    """Check bundle files; print every problem as file:line: key: message (exit 1 if any)."""
    failed = False
    for file in path:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            err.print(f"{file}: cannot read: {exc.strerror}")
            failed = True
            continue
        found = problems(file, text)
        for line in found:
            err.print(line, markup=False)
        if found:
            failed = True
        else:
            bundle = load_bundle(file)
            out.print(
                f"{file}: ok — bundle {bundle.bundle}, {len(bundle.policies)} policies, "
                f"sha256 {bundle.sha256}",
                markup=False,
            )
    if failed:
        raise typer.Exit(1)


@app.command()
def explain(
    policy_id: Annotated[str, typer.Argument(metavar="ID", help="policy id")],
    bundle: Annotated[
        Path | None,
        typer.Option(help="bundle file (default: PROVENANT_POLICY_BUNDLE or the default bundle)"),
    ] = None,
) -> None:
    """Say in words what one policy checks, where it applies and what happens when it fails."""
    file = bundle or bundle_path(Settings().policy_bundle)
    if file is None:
        err.print("no policy bundle configured (PROVENANT_POLICY_BUNDLE or --bundle)")
        raise typer.Exit(2)
    try:
        loaded = load_bundle(file)
    except ProvenantError as exc:
        err.print(exc.message, markup=False)
        raise typer.Exit(2) from None
    for policy in loaded.policies:
        if policy.id == policy_id:
            out.print(describe(policy), markup=False)
            return
    err.print(
        f"{file}: no policy {policy_id!r}; policies: {', '.join(p.id for p in loaded.policies)}",
        markup=False,
    )
    raise typer.Exit(1)
