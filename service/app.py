"""The application factory: the lifespan builds every long-lived object onto ``app.state``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from service import __version__
from service.config import RoutesFile, Settings, load_routes
from service.db.engine import make_engine, make_sessionmaker
from service.documents import endpoints as document_endpoints
from service.documents.registry import Registry
from service.errors import install_handlers
from service.gateway import endpoints as gateway_endpoints
from service.gateway.backends.openai import OpenAIBackend, new_client_session
from service.gateway.backends.rag import Plans
from service.gateway.fastpath import is_chat_completion, serve_chat_completion
from service.gateway.pipeline import Pipeline
from service.gateway.writer import AuditWriter
from service.health import router as health_router
from service.integrity import endpoints as integrity_endpoints
from service.integrity import signing
from service.integrity.log import Sealer, seal_periodically
from service.integrity.receipts import Receipts
from service.lineage import endpoints as lineage_endpoints
from service.retrieval.retriever import Retriever
from service.tenancy.auth import KeyResolver

log = logging.getLogger("provenant")


class Gateway(FastAPI):
    """The FastAPI app, with ``POST /v1/chat/completions`` dispatched ahead of the framework.

    The framework's per-request layers cost more than the rest of the proxy (bench/RESULTS.md),
    so the hot path goes straight to ``fastpath.serve_chat_completion``; everything else, and
    the OpenAPI schema of the chat route, stays FastAPI's. ``fast_path = False`` sends the chat
    route through the framework too (the tests compare both).
    """

    fast_path = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path and is_chat_completion(scope):
            await serve_chat_completion(self.state, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, routes: RoutesFile | None = None) -> Gateway:
    """Build the gateway for these settings (routes read from ``settings.config`` if not given)."""
    routes = routes if routes is not None else load_routes(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        writer = AuditWriter(
            engine,
            max_batch=settings.writer_max_batch,
            probe_interval_s=settings.store_probe_interval_s,
        )
        await run_in_threadpool(writer.start)
        if not writer.healthy:
            log.warning("lineage store unreachable at start: requests get 503 until it answers")
        http = new_client_session(settings.upstream_connections)
        sessions = make_sessionmaker(engine)
        key_path, may_create = settings.signing_key_path()
        signer = signing.Signer(
            signing.load_or_create(key_path, create=may_create), settings.log_origin
        )
        sealer = Sealer(engine, signer)
        sealing = asyncio.create_task(seal_periodically(sealer, settings.seal_interval_s))
        registry = await run_in_threadpool(Registry.build, settings, sessions)
        app.state.settings = settings
        app.state.sessions = sessions
        app.state.writer = writer
        app.state.keys = KeyResolver(sessions, settings.key_cache_ttl_s)
        app.state.sealer = sealer
        app.state.registry = registry
        backend = OpenAIBackend(http)
        app.state.pipeline = Pipeline(
            routes.by_name(),
            backend,
            writer,
            Receipts(signer, settings.max_merge_delay_s),
            Plans(routes.by_name(), backend, Retriever(registry), sessions),
        )
        app.state.draining = False
        try:
            yield
        finally:
            app.state.draining = True
            sealing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sealing
            await http.close()
            await run_in_threadpool(writer.stop)
            engine.dispose()
            try:  # last, and never in the way of the store's shutdown
                await run_in_threadpool(registry.close)
            except Exception:
                log.exception("closing the vector index failed")

    app = Gateway(
        title="Provenant",
        version=__version__,
        summary="Audit and provenance gateway for LLM answers",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(health_router)
    app.include_router(gateway_endpoints.router)
    app.include_router(lineage_endpoints.router)
    app.include_router(integrity_endpoints.router)
    app.include_router(document_endpoints.router)
    return app


def create_app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` and ``provenant serve``: settings from the environment."""
    return create_app(Settings())
