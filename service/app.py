"""The application factory: the lifespan builds every long-lived object onto ``app.state``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from service import __version__
from service.config import RoutesFile, Settings, load_routes
from service.db.engine import make_engine, make_sessionmaker
from service.documents import endpoints as document_endpoints
from service.documents.registry import Registry
from service.errors import HeadersTooLarge, ProvenantError, error_response, install_handlers
from service.gateway import endpoints as gateway_endpoints
from service.gateway.backends.openai import OpenAIBackend, new_client_session
from service.gateway.backends.rag import Plans
from service.gateway.fastpath import PATH, is_chat_completion, serve_chat_completion
from service.gateway.idempotency import Idempotency
from service.gateway.pipeline import Pipeline
from service.gateway.writer import AuditWriter
from service.health import router as health_router
from service.integrity import endpoints as integrity_endpoints
from service.integrity import signing
from service.integrity.log import Sealer, seal_periodically
from service.integrity.receipts import Receipts
from service.lineage import endpoints as lineage_endpoints
from service.policies import endpoints as policy_endpoints
from service.policies.service import Policies, bundle_path, load_engine
from service.privacy import endpoints as privacy_endpoints
from service.privacy.erasure import retain_periodically
from service.provenance import endpoints as provenance_endpoints
from service.provenance.registry import configure_client
from service.provenance.resolver import ModelResolver
from service.reports import endpoints as report_endpoints
from service.retrieval.retriever import Retriever
from service.telemetry import endpoints as telemetry_endpoints
from service.telemetry.http import HttpObserver
from service.telemetry.metrics import Metrics, flush_periodically
from service.telemetry.tracing import Tracing
from service.tenancy.auth import KeyResolver
from service.tenancy.limits import RateLimiter
from service.ui import endpoints as ui_endpoints
from service.ui.sessions import SessionSigner

log = logging.getLogger("provenant")


# on every response but the chat fast path's (an API answer): no sniffing, no framing, no caching
API_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# /ui: same-origin referrers, so a browser's form POST names its origin (checked on sign-in and
# sign-out; with no-referrer Chromium sends "Origin: null")
UI_HEADERS = [
    *(h for h in API_HEADERS if h[0] != b"referrer-policy"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class Gateway(FastAPI):
    """The FastAPI app, with ``POST /v1/chat/completions`` dispatched ahead of the framework.

    The framework's per-request layers cost more than the rest of the proxy (bench/RESULTS.md),
    so the hot path goes straight to ``fastpath.serve_chat_completion``; everything else, and
    the OpenAPI schema of the chat route, stays FastAPI's. ``fast_path = False`` sends the chat
    route through the framework too (the tests compare both).
    """

    fast_path = True
    max_header_bytes = 32 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            await error_response(
                HeadersTooLarge(f"request headers exceed {self.max_header_bytes} bytes")
            )(scope, receive, send)
            return
        # every HTTP request is timed, counted and traced (telemetry.http) around its handler
        observer: HttpObserver | None = getattr(self.state, "observer", None)
        if self.fast_path and is_chat_completion(scope):
            if observer is None:
                await self._serve_chat(scope, receive, send)
            else:
                await observer.observe(scope, receive, send, self._serve_chat, PATH)
            return
        extra = UI_HEADERS if scope["path"].startswith("/ui") else API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        if observer is None:
            await super().__call__(scope, receive, send_with_headers)
        else:
            await observer.observe(scope, receive, send_with_headers, super().__call__, None)

    async def _serve_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_chat_completion(self.state, scope, receive, send)


def create_app(
    settings: Settings,
    routes: RoutesFile | None = None,
    *,
    tracing: Tracing | None = None,
    settle: bool = False,
) -> Gateway:
    """Build the gateway for these settings (routes read from ``settings.config`` if not given;
    tracing from the standard ``OTEL_*`` variables if not given). ``settle``: the process is
    the server's own, so its heap is settled once started (``settle_heap``)."""
    routes = routes if routes is not None else load_routes(settings.config)
    policy_file = bundle_path(settings.policy_bundle)
    policies = Policies(policy_file, load_engine(policy_file))  # an invalid bundle stops here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracer = tracing if tracing is not None else Tracing.from_environment()
        metrics = Metrics()
        engine = make_engine(settings.database_url)
        writer = AuditWriter(
            engine,
            max_batch=settings.writer_max_batch,
            probe_interval_s=settings.store_probe_interval_s,
            on_batch=metrics.observe_commit,
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
        sealing = asyncio.create_task(
            seal_periodically(sealer, settings.seal_interval_s, metrics.observe_seal)
        )
        retaining = asyncio.create_task(retain_periodically(sessions, settings))
        counting = asyncio.create_task(flush_periodically(metrics))
        metrics.watch_store(engine, writer)
        models = await _model_resolver(settings, routes, engine)
        sourced = any(route.kind != "openai" for route in routes.routes)
        registry = await run_in_threadpool(
            functools.partial(Registry.build, settings, sessions, open_now=sourced)
        )
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.sessions = sessions
        app.state.writer = writer
        app.state.keys = KeyResolver(
            sessions,
            settings.key_cache_ttl_s,
            RateLimiter(
                settings.rate_limit_rps,
                settings.rate_limit_burst or int(2 * settings.rate_limit_rps),
            ),
        )
        app.state.sealer = sealer
        app.state.ui_sessions = SessionSigner.from_signing_key(
            signer.key.private_bytes_raw(),
            settings.ui_session_ttl_s,
            secure=settings.ui_secure_cookies,
        )
        app.state.policies = policies
        app.state.registry = registry
        backend = OpenAIBackend(http, max_response_bytes=settings.max_upstream_response_bytes)
        app.state.pipeline = Pipeline(
            routes.by_name(),
            backend,
            writer,
            Receipts(signer, settings.max_merge_delay_s),
            policies,
            models,
            Plans(routes.by_name(), backend, Retriever(registry), sessions),
            tracing=tracer,
            metrics=metrics,
            idempotency=Idempotency(
                sessions, ttl_s=settings.idempotency_ttl_s, lease_s=settings.idempotency_lease_s
            ),
        )
        app.state.observer = HttpObserver(tracer, metrics)
        app.state.draining = False
        await _policies_on_record(policies, sessions)
        _reload_on_sighup(policies, sessions)
        _drain_on_sigterm(app, settings.shutdown_delay_s)
        if settle:
            settle_heap()
        try:
            yield
        finally:
            app.state.draining = True
            log.info("shutting down: flushing the audit writer")
            for task in (sealing, retaining, counting):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await models.aclose()
            await http.close()
            await run_in_threadpool(writer.stop)
            engine.dispose()
            await run_in_threadpool(tracer.shutdown)  # flush the last spans
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
    app.max_header_bytes = settings.max_header_bytes
    install_handlers(app)
    app.include_router(health_router)
    app.include_router(gateway_endpoints.router)
    app.include_router(lineage_endpoints.router)
    app.include_router(integrity_endpoints.router)
    app.include_router(policy_endpoints.router)
    app.include_router(privacy_endpoints.router)
    app.include_router(telemetry_endpoints.router)
    app.include_router(provenance_endpoints.router)
    app.include_router(document_endpoints.router)
    app.include_router(report_endpoints.router)
    ui_endpoints.mount(app)
    return app


async def _policies_on_record(policies: Policies, sessions: sessionmaker[Session]) -> None:
    try:
        await run_in_threadpool(policies.record_loaded, sessions, actor="gateway:start")
    except SQLAlchemyError as exc:
        log.warning("policy bundle load not recorded (store unreachable): %s", type(exc).__name__)


def _reload_on_sighup(policies: Policies, sessions: sessionmaker[Session]) -> None:
    """SIGHUP reloads the policy bundle (a failed reload keeps the current one)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        async def run() -> None:
            try:
                await run_in_threadpool(policies.reload, sessions, actor="signal:SIGHUP")
            except ProvenantError as exc:
                log.error("policy reload refused, keeping %s: %s", policies.sha256, exc.message)
            except SQLAlchemyError as exc:
                log.error("policy reload not recorded, bundle unchanged: %s", type(exc).__name__)

        _background.add(task := loop.create_task(run()))
        task.add_done_callback(_background.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload)


_background: set[asyncio.Task[None]] = set()


def settle_heap() -> None:
    """Once the application is built: move what start-up made (modules, routes, compiled
    policies, SQLAlchemy metadata: ~170,000 objects) out of the collector's reach.

    Measured under load (64 connections, SQLite): with CPython's defaults each full collection
    walked the whole start-up heap (~75 ms, one every ~1,500 answers, ~50 us per answer in
    all); after ``gc.freeze()`` full collections take ~3 ms. The young-generation threshold
    stays at CPython's default (700): at 7,000 the collector's own time fell from ~25-35 to
    ~2-3 us per answer (``gc.callbacks``), yet interleaved A/Bs showed no gain (SQLite, 8
    rounds: 1,376 vs 1,418 answers/s; PostgreSQL: 871 vs 887), the young generation then
    holding ten times the garbage between collections."""
    gc.collect()
    gc.freeze()


def _drain_on_sigterm(app: FastAPI, delay_s: float) -> None:
    """SIGTERM: readiness goes false at once (``/readyz`` 503, so load balancers stop sending),
    the gateway keeps serving for ``delay_s``, then hands the signal to the server, which stops
    accepting, lets in-flight requests (streams too) finish, and runs the lifespan's shutdown:
    the audit writer flushes every queued record before the process exits.

    Only under a server that handles SIGTERM itself (uvicorn, in the main thread): its handler
    is the one called after the delay. A second SIGTERM skips the rest of the delay."""
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    handler = server_handler

    def on_sigterm() -> None:
        if app.state.draining:
            handler(signal.SIGTERM, None)
            return
        app.state.draining = True
        log.info("SIGTERM: not ready; draining in %gs", delay_s)
        loop.call_later(delay_s, handler, signal.SIGTERM, None)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)


async def _model_resolver(settings: Settings, routes: RoutesFile, engine: Engine) -> ModelResolver:
    """The registry-linked routes' resolver, warmed once at start (a registry that does not
    answer is logged, not fatal: those routes answer 503 until it does)."""
    resolver = ModelResolver(
        routes.by_name(),
        engine,
        default_tracking_uri=settings.mlflow_tracking_uri,
        ttl_s=settings.model_cache_ttl_s,
        max_staleness_s=settings.model_max_staleness_s,
    )
    if resolver.routes:
        configure_client(settings.mlflow_request_timeout_s, settings.mlflow_max_retries)
        errors = await resolver.refresh_all()
        for route, error in errors.items():
            if error:
                log.warning("route %s: model lineage unresolved at start: %s", route, error)
    return resolver


def create_app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` and ``provenant serve``: settings from the environment."""
    return create_app(Settings(), settle=True)
