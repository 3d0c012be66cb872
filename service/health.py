"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the lineage store answers (the gateway fails closed without it). Model
    registries are listed with their state as last seen (no registry call per probe); one that
    is unavailable makes only its routes fail, so it does not make the gateway unready."""
    state = request.app.state
    store_ok = await run_in_threadpool(state.writer.probe)
    checks: dict[str, Any] = {"lineage_store": "ok" if store_ok else "unreachable"}
    models = state.pipeline.models
    if models is not None and models.routes:
        checks["model_registries"] = models.registries()
    body: dict[str, Any] = {
        "status": "ready" if store_ok and not state.draining else "not_ready",
        "checks": checks,
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)
