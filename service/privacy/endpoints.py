"""Legal holds, erasure and retention for a tenant's admins (auditors may list holds)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.deps import SessionDep, SettingsDep
from service.privacy import erasure, holds
from service.privacy.models import HoldScope
from service.tenancy.auth import CurrentPrincipal, Principal

router = APIRouter(prefix="/v1/admin", tags=["privacy"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HoldIn(_Body):
    scope: HoldScope
    value: str = Field(min_length=1, max_length=256, description="end user id, record id or route")
    reason: str = Field(min_length=1, max_length=2000)


class ReasonIn(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class ErasureIn(_Body):
    subject: str = Field(min_length=1, max_length=256, description="the end user id (`user`)")
    reason: str = Field(min_length=1, max_length=2000)


class RetentionIn(_Body):
    dry_run: bool = False


def _actor(principal: Principal) -> str:
    return f"key:{principal.key_prefix}"


@router.post("/holds", status_code=201)
def place_hold(body: HoldIn, principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    """Place a legal hold on a subject, a record or a route: retention and erasure skip it."""
    hold = holds.place(
        session,
        tenant_id=principal.tenant_id,
        scope=body.scope.value,
        value=body.value,
        reason=body.reason,
        actor=_actor(principal),
    )
    return holds.view(hold)


@router.get("/holds")
def list_holds(
    principal: CurrentPrincipal,
    session: SessionDep,
    active: Annotated[bool, Query(description="only holds not yet released")] = True,
) -> dict[str, Any]:
    """The tenant's legal holds."""
    found = holds.listing(session, principal.tenant_id, active_only=active)
    return {"object": "list", "data": [holds.view(h) for h in found]}


@router.post("/holds/{hold_id}/release")
def release_hold(
    hold_id: uuid.UUID, body: ReasonIn, principal: CurrentPrincipal, session: SessionDep
) -> dict[str, Any]:
    """Release a legal hold (once, with a reason)."""
    hold = holds.release(
        session,
        tenant_id=principal.tenant_id,
        hold_id=hold_id,
        reason=body.reason,
        actor=_actor(principal),
    )
    return holds.view(hold)


@router.post("/erasure")
def erase(body: ErasureIn, principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    """Erase the content of every record of one end user (409 `legal_hold` if held)."""
    done = erasure.erase_subject(
        session,
        tenant_id=principal.tenant_id,
        subject=body.subject,
        reason=body.reason,
        actor=_actor(principal),
    )
    return {"subject": done.subject, "erased": done.erased, "already_erased": done.already_erased}


@router.post("/retention/run")
def run_retention(
    request: Request, body: RetentionIn, principal: CurrentPrincipal, settings: SettingsDep
) -> dict[str, Any]:
    """Erase the content of the tenant's records past their retention (hashes stay)."""
    done = erasure.run_retention(
        request.app.state.sessions,
        floor_days=settings.retention_floor_days,
        actor=_actor(principal),
        tenant_id=principal.tenant_id,
        dry_run=body.dry_run,
    )
    return {
        "erased" if not body.dry_run else "would_erase": done.erased,
        "cutoff": done.cutoff.isoformat(),
        "floor": done.floor.isoformat(),
    }
