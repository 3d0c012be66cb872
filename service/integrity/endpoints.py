"""The log's public face: checkpoints, proofs, and the keys to check them with."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from service.deps import SessionDep
from service.integrity import service
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["integrity"])
MAX_SIZE = 2**62  # tree sizes are BIGINT; anything larger is a bad request, not a server error


@router.get("/.well-known/jwks.json")
def jwks(session: SessionDep) -> dict[str, Any]:
    """Public keys (Ed25519, RFC 7638 key ids) that sign checkpoints and receipts."""
    return service.jwks(session)


@router.get("/v1/audit/checkpoints/latest")
def latest_checkpoint(principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    """The latest signed checkpoint (C2SP tlog-checkpoint note)."""
    return service.checkpoint(session)


@router.get("/v1/audit/checkpoints/{size}")
def checkpoint(
    size: Annotated[int, Path(ge=1, le=MAX_SIZE)], principal: CurrentPrincipal, session: SessionDep
) -> dict[str, Any]:
    """The signed checkpoint of one tree size."""
    return service.checkpoint(session, size=size)


@router.get("/v1/audit/records/{record_id}/proof")
def inclusion_proof(
    record_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: SessionDep,
    size: Annotated[
        int | None, Query(ge=1, le=MAX_SIZE, description="checkpoint; default latest")
    ] = None,
) -> dict[str, Any]:
    """The record's RFC 9162 inclusion proof against a signed checkpoint (own tenant only)."""
    return service.inclusion(session, principal=principal, record_id=record_id, size=size)


@router.get("/v1/audit/consistency")
def consistency_proof(
    principal: CurrentPrincipal,
    session: SessionDep,
    first: Annotated[int, Query(alias="from", ge=1, le=MAX_SIZE)],
    second: Annotated[int, Query(alias="to", ge=1, le=MAX_SIZE)],
) -> dict[str, Any]:
    """The RFC 9162 consistency proof between two signed checkpoints: the log only grew."""
    return service.consistency(session, first=first, second=second)
