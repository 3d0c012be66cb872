"""``provenant seal``, ``verify``, ``verify-receipt``, ``pack``: the log from the command line."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from service.config import Settings

err = Console(stderr=True)


def _engine(url: str) -> Any:
    from service.db.engine import make_engine

    return make_engine(url)


def _signer(settings: Settings) -> Any:
    from service.integrity import signing

    path, may_create = settings.signing_key_path()
    return signing.Signer(signing.load_or_create(path, create=may_create), settings.log_origin)


def seal() -> None:
    """Seal pending log entries now and sign a checkpoint (the gateway also does this itself)."""
    from service.integrity.log import Sealer

    settings = Settings()
    engine = _engine(settings.database_url)
    try:
        sealer = Sealer(engine, _signer(settings))
        sealer.register_key()
        done = sealer.seal()
    finally:
        engine.dispose()
    if not done:
        err.print("nothing to seal (or another sealer is running)")
        return
    err.print(f"sealed {sum(d.entries for d in done)} entries; tree size {done[-1].tree_size}")


def _load_jwks(source: str) -> dict[str, Any]:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as resp:  # noqa: S310 (the user's URL)
            data: dict[str, Any] = orjson.loads(resp.read())
            return data
    loaded: dict[str, Any] = orjson.loads(Path(source).read_bytes())
    return loaded


def verify(
    pack: Annotated[
        Path | None,
        typer.Option(
            help="verify an evidence pack offline: a ZIP (`provenant evidence`) or "
            "a SQLite file (`provenant pack`)"
        ),
    ] = None,
    jwks: Annotated[
        str | None,
        typer.Option(help="trust only these keys (JWKS file or URL), not the database's own list"),
    ] = None,
    origin: Annotated[str | None, typer.Option(help="log origin (PROVENANT_LOG_ORIGIN)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    native: Annotated[
        bool,
        typer.Option(
            help="walk an SQLite store with the C scan when it is built (the findings are the "
            "same; --no-native, or PROVENANT_VERIFY_NATIVE=0, forces the Python walk)"
        ),
    ] = True,
) -> None:
    """Recompute every leaf, rebuild the tree, check every checkpoint; name what was changed.
    Exit 0 if the log verifies, 1 if anything was altered, deleted, inserted or reordered."""
    from service.integrity.evidence import is_zip, verify_pack
    from service.integrity.signing import b64url_decode
    from service.integrity.verify import verify as run

    settings = Settings()
    if pack is not None and not pack.is_file():
        err.print(f"[red]error:[/red] no evidence pack at {pack}")
        raise typer.Exit(2)
    publics = None
    if jwks is not None:
        publics = {k["kid"]: b64url_decode(k["x"]) for k in _load_jwks(jwks).get("keys", [])}
    if pack is not None and is_zip(pack):
        report, own_keys = verify_pack(pack, publics=publics, origin=origin)
        if own_keys and not as_json:
            err.print(
                "[yellow]warning:[/yellow] trusting the pack's own jwks.json; pass --jwks with "
                "the gateway's keys to verify against keys you fetched yourself"
            )
        _print(report, as_json, pack=True)
    url = f"sqlite:///{pack}" if pack is not None else settings.database_url
    engine = _engine(url)
    try:
        with Progress(
            TextColumn("verifying"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} entries"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("verify", total=None)
            report = run(
                engine,
                origin=origin or settings.log_origin,
                publics=publics,
                max_merge_delay_s=settings.max_merge_delay_s,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                native=native and settings.verify_native,
            )
    finally:
        engine.dispose()
    _print(report, as_json)


def _print(report: Any, as_json: bool, *, pack: bool = False) -> None:
    """Print a verification report and exit 0 (verifies) or 1."""
    if as_json:
        out = {
            "ok": report.ok,
            "tree_size": report.tree_size,
            "checkpoints": report.checkpoints,
            "latest_checkpoint": report.latest_checkpoint,
            "unsigned_tail": report.unsigned_tail,
            "pending": report.pending,
            "natively_confirmed": report.natively_confirmed,
            "problems": [p.__dict__ for p in report.problems],
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for p in report.problems:
            where = f"index {p.index} " if p.index is not None else ""
            who = f"{p.entry_id} " if p.entry_id else ""
            print(f"{p.kind.upper()}: {where}{who}{p.detail}")
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        if pack:
            print(
                f"{verdict}: {report.entries} entries of the pack checked against the signed "
                f"checkpoint of tree size {report.latest_checkpoint}; {report.pending} records "
                "of the period not yet sealed (not provable by this pack)"
            )
            raise typer.Exit(0 if report.ok else 1)
        print(
            f"{verdict}: {report.tree_size} entries, {report.checkpoints} checkpoints "
            f"(latest {report.latest_checkpoint}), {report.unsigned_tail} not yet signed, "
            f"{report.pending} pending"
        )
    raise typer.Exit(0 if report.ok else 1)


def verify_receipt(
    receipt: Annotated[str, typer.Argument(help="the receipt (compact JWS), or @FILE")],
    jwks: Annotated[str, typer.Option(help="JWKS file or URL (/.well-known/jwks.json)")],
    answer: Annotated[
        Path | None, typer.Option(help="a file with the answer text the receipt should cover")
    ] = None,
) -> None:
    """Check a receipt's signature (and, with --answer, that it covers that answer)."""
    import hashlib

    import jwt

    from service.integrity.signing import verify_receipt as check

    token = Path(receipt[1:]).read_text().strip() if receipt.startswith("@") else receipt.strip()
    try:
        claims = check(token, _load_jwks(jwks))
    except (jwt.InvalidTokenError, ValueError) as exc:
        print(f"INVALID: {exc}")
        raise typer.Exit(1) from exc
    if answer is not None:
        digest = hashlib.sha256(answer.read_bytes()).hexdigest()
        if digest != claims.get("answer_sha256"):
            print("INVALID: the receipt does not cover this answer")
            raise typer.Exit(1)
    print(orjson.dumps(claims, option=orjson.OPT_INDENT_2).decode())
    print("VALID")


def pack(
    out: Annotated[Path, typer.Option("--out", help="the evidence pack to write (SQLite)")],
) -> None:
    """Export the log (records, lineage rows, events, entries, checkpoints, public keys) as an
    evidence pack that `provenant verify --pack` checks offline."""
    from service.integrity.packs import export

    settings = Settings()
    if out.exists():
        err.print(f"[red]error:[/red] {out} exists; choose a new file")
        raise typer.Exit(2)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("exporting", total=None)
        counts = export(
            settings.database_url,
            out,
            progress=lambda table, n: bar.update(task, description=f"{table}: {n:,} rows"),
        )
    err.print("wrote " + ", ".join(f"{n:,} {t}" for t, n in counts.items()) + f" to {out}")
