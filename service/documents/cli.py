"""``provenant ingest``: files or a directory into a collection, with a progress bar.

It opens the vector store itself unless it cannot: local-mode Qdrant admits one process, so
while a gateway holds it (``make run``), files are posted to that gateway's ``POST
/v1/documents`` instead, with the given admin key or, if none is given, a temporary admin key
created for the run and revoked after it (both recorded as admin events).
"""

from __future__ import annotations

import contextlib
import mimetypes
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from service.config import Settings
from service.documents.extract import MEDIA_TYPES
from service.errors import ProvenantError, VectorStoreUnavailable

if TYPE_CHECKING:
    from service.documents.index import VectorIndex

err = Console(stderr=True, soft_wrap=True)
# ingests one file, returns "created", "new_version" or "unchanged"; raises ProvenantError
_Ingest = Callable[["_File"], str]


@dataclass(frozen=True)
class _File:
    path: Path
    source_uri: str


def _files(path: Path, source_prefix: str, source_uri: str | None) -> list[_File]:
    if path.is_file():
        return [_File(path, source_uri or source_prefix + path.name)]
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in MEDIA_TYPES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return [_File(p, source_prefix + p.relative_to(path).as_posix()) for p in found]


def _gateway_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


@contextlib.contextmanager
def _temporary_key(settings: Settings, tenant: str) -> Iterator[str]:
    from service.db.engine import make_engine, make_sessionmaker
    from service.tenancy.service import create_key, revoke_key

    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            issued = create_key(
                session, tenant=tenant, role="admin", label="provenant ingest (temporary)"
            )
            session.commit()
        try:
            yield issued.key
        finally:
            with sessions() as session:
                revoke_key(session, prefix=issued.prefix)
                session.commit()
    finally:
        engine.dispose()


def _post(client: httpx.Client, f: _File, collection: str, title: str | None) -> str:
    mime = mimetypes.guess_type(f.path.name)[0] or "application/octet-stream"
    data = {"collection": collection, "source_uri": f.source_uri}
    if title:
        data["title"] = title
    resp = client.post(
        "/v1/documents", data=data, files={"file": (f.path.name, f.path.read_bytes(), mime)}
    )
    if resp.status_code in (200, 201):
        return str(resp.json()["status"])
    try:
        error = resp.json()["error"]
        message = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {resp.status_code}"
    raise ProvenantError(message)


def _run(files: list[_File], collection: str, ingest_one: _Ingest) -> int:
    counts: Counter[str] = Counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("ingesting", total=len(files))
        for f in files:
            progress.update(task, description=f.source_uri[-40:])
            try:
                status = ingest_one(f)
            except ProvenantError as exc:
                status = "failed"
                progress.console.print(f"[red]failed[/red] {f.source_uri}: {exc.message}")
            else:
                progress.console.print(f"{status:12s} {f.source_uri}")
            counts[status] += 1
            progress.advance(task)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no files"
    err.print(f"collection {collection!r}: {summary}")
    return counts["failed"]


def ingest(
    path: Annotated[Path, typer.Argument(exists=True, help="a file or a directory")],
    collection: Annotated[str, typer.Option(help="document collection")],
    tenant: Annotated[str, typer.Option(help="owning tenant (direct mode)")] = "default",
    title: Annotated[str | None, typer.Option(help="title (a single file)")] = None,
    source_uri: Annotated[str | None, typer.Option(help="source URI (a single file)")] = None,
    source_prefix: Annotated[str, typer.Option(help="prefix of derived source URIs")] = "",
    gateway: Annotated[
        str | None, typer.Option(help="post to this gateway instead of opening the store")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="PROVENANT_API_KEY", help="admin key for --gateway")
    ] = None,
) -> None:
    """Ingest .txt, .md, .pdf, .html and .docx files (a directory: recursively) into a collection.

    Unchanged files are no-ops; changed ones become a new version and supersede the previous.
    """
    from service.documents.index import VectorIndex

    settings = Settings()
    files = _files(path, source_prefix, source_uri)
    if len(files) > 1 and (title or source_uri):
        err.print("[red]error:[/red] --title and --source-uri apply to a single file")
        raise typer.Exit(2)
    if not files:
        err.print(f"no .txt, .md, .pdf, .html or .docx files under {path}")
        raise typer.Exit(1)
    index = None
    try:
        if gateway is None:
            try:
                index = VectorIndex.open(settings)
            except VectorStoreUnavailable:
                if settings.qdrant_url:
                    raise
                gateway = _gateway_url(settings)
                err.print(
                    f"the vector store is held by a running gateway: ingesting through {gateway}"
                )
        if index is not None:
            failed = _direct(settings, index, files, collection, tenant, title)
        else:
            assert gateway is not None
            failed = _through_gateway(settings, gateway, key, files, collection, tenant, title)
    except ProvenantError as exc:  # a whole-run failure (store down, bad key...), not one file's
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    if failed:
        raise typer.Exit(1)


def _direct(
    settings: Settings,
    index: VectorIndex,
    files: list[_File],
    collection: str,
    tenant: str,
    title: str | None,
) -> int:
    from service.db.engine import make_engine, make_sessionmaker
    from service.documents import service
    from service.documents.embeddings import Embedder
    from service.tenancy.service import ensure_tenant

    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    embedder = Embedder.from_settings(settings)
    limits = service.Limits.of(settings)
    try:
        with sessions() as session:
            tenant_id = ensure_tenant(session, tenant).id
            session.commit()

        def one(f: _File) -> str:
            upload = service.Upload(
                collection=collection,
                source_uri=f.source_uri,
                data=f.path.read_bytes(),
                filename=f.path.name,
                title=title,
            )
            result = service.ingest(
                sessions,
                index,
                embedder,
                tenant_id=tenant_id,
                upload=upload,
                limits=limits,
                actor="cli",
            )
            return result.status

        return _run(files, collection, one)
    finally:
        index.close()
        if embedder is not None:
            embedder.close()
        engine.dispose()


def _through_gateway(
    settings: Settings,
    gateway: str,
    key: str | None,
    files: list[_File],
    collection: str,
    tenant: str,
    title: str | None,
) -> int:
    with contextlib.ExitStack() as stack:
        if key is None:
            key = stack.enter_context(_temporary_key(settings, tenant))
        client = stack.enter_context(
            httpx.Client(
                base_url=gateway,
                headers={"Authorization": f"Bearer {key}"},
                timeout=300,
                trust_env=False,
            )
        )

        def one(f: _File) -> str:
            try:
                return _post(client, f, collection, title)
            except httpx.HTTPError as exc:
                raise ProvenantError(f"gateway unreachable: {type(exc).__name__}") from exc

        return _run(files, collection, one)


def reindex(
    collection: Annotated[
        str | None, typer.Option(help="one collection (default: every collection)")
    ] = None,
) -> None:
    """Rebuild the vector index from the document registry in SQL (e.g. after moving from local
    mode to a Qdrant server, or losing the index); also removes points SQL does not know.

    In local mode, stop the gateway first: it holds the store.
    """
    from service.db.engine import make_engine, make_sessionmaker
    from service.documents import repository, service
    from service.documents.embeddings import Embedder
    from service.documents.index import VectorIndex

    settings = Settings()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    embedder = Embedder.from_settings(settings)
    try:
        index = VectorIndex.open(settings)
    except ProvenantError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    try:
        with sessions() as session:
            names = [collection] if collection else repository.collections(session)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            for name in names:
                task = progress.add_task(name, total=None)

                def advance(done: int, total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=total)

                counts = service.reindex(
                    sessions, index, embedder, collection=name, progress=advance
                )
                progress.console.print(
                    f"{name}: {counts['versions']} versions, {counts['chunks']} chunks "
                    f"({counts['active']} active), "
                    f"{counts['orphans_deleted']} orphan points deleted"
                )
    except ProvenantError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    finally:
        index.close()
        if embedder is not None:
            embedder.close()
        engine.dispose()
