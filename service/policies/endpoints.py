"""The active policy bundle, and its reload (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service.policies.service import Policies
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["policies"])


def _policies(request: Request) -> Policies:
    policies: Policies = request.app.state.policies
    return policies


@router.get("/v1/policies")
def active_bundle(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """The bundle in force: file, hash, and each policy with its hash."""
    return _policies(request).summary()


@router.post("/v1/admin/policies/reload")
async def reload_bundle(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Load the bundle file again. Refused with every problem (file, line, key) and the current
    bundle kept when the file is invalid; recorded as an admin event with old and new hashes."""
    return await run_in_threadpool(
        _policies(request).reload,
        request.app.state.sessions,
        actor=f"key:{principal.key_prefix}",
    )
