"""Reading the log for clients: checkpoints, inclusion proofs, consistency proofs, the JWKS."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import InvalidRequest, NotFound, NotSealedYet
from service.integrity import merkle
from service.integrity.log import StoredTree, tree_size
from service.integrity.models import Checkpoint, LogEntry, SigningKey
from service.integrity.signing import b64url_decode, public_jwk
from service.lineage.models import AuditRecord
from service.tenancy.auth import Principal


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode() for x in items]


def _checkpoint_out(cp: Checkpoint) -> dict[str, Any]:
    return {
        "tree_size": cp.tree_size,
        "root_hash": base64.b64encode(bytes.fromhex(cp.root_sha256)).decode(),
        "key_id": cp.key_id,
        "created_at": cp.created_at.isoformat(),
        "checkpoint": cp.note,
    }


def _checkpoint(session: Session, size: int | None) -> Checkpoint:
    stmt = select(Checkpoint)
    stmt = (
        stmt.order_by(Checkpoint.tree_size.desc()).limit(1)
        if size is None
        else stmt.where(Checkpoint.tree_size == size)
    )
    cp = session.execute(stmt).scalar()
    if cp is None:
        raise NotFound("no checkpoint yet" if size is None else f"no checkpoint of size {size}")
    return cp


def checkpoint(session: Session, *, size: int | None = None) -> dict[str, Any]:
    """The latest signed checkpoint, or the one of ``size``."""
    return _checkpoint_out(_checkpoint(session, size))


def inclusion(
    session: Session, *, principal: Principal, record_id: uuid.UUID, size: int | None
) -> dict[str, Any]:
    """The inclusion proof of a record of the caller's tenant against a signed checkpoint."""
    owned = session.execute(
        select(AuditRecord.id).where(
            AuditRecord.id == record_id, AuditRecord.tenant_id == principal.tenant_id
        )
    ).scalar()
    if owned is None:
        raise NotFound(f"no audit record {record_id}")
    entry = session.execute(select(LogEntry).where(LogEntry.entry_id == record_id)).scalar()
    if entry is None:
        raise NotSealedYet(
            f"audit record {record_id} is not sealed yet; retry within the maximum merge delay"
        )
    cp = _checkpoint(session, size)
    if entry.idx >= cp.tree_size:
        raise NotSealedYet(f"checkpoint {cp.tree_size} does not cover log index {entry.idx} yet")
    tree = StoredTree(session.connection())
    proof = merkle.inclusion_path(entry.idx, cp.tree_size, tree.mth)
    return {
        "audit_id": str(record_id),
        "log_index": entry.idx,
        "leaf_hash": base64.b64encode(bytes.fromhex(entry.leaf_sha256)).decode(),
        "tree_size": cp.tree_size,
        "proof": _b64(proof),
        "checkpoint": _checkpoint_out(cp),
    }


def consistency(session: Session, *, first: int, second: int) -> dict[str, Any]:
    """The consistency proof between two signed checkpoints' trees."""
    if not 0 < first <= second:
        raise InvalidRequest("need 0 < from <= to", param="from")
    old, new = _checkpoint(session, first), _checkpoint(session, second)
    if second > tree_size(session.connection()):
        raise NotFound(f"the log holds fewer than {second} entries")
    proof = merkle.consistency_path(first, second, StoredTree(session.connection()).mth)
    return {
        "from": _checkpoint_out(old),
        "to": _checkpoint_out(new),
        "proof": _b64(proof),
    }


def jwks(session: Session) -> dict[str, Any]:
    """Every key that has signed for this log, current and rotated out."""
    keys = session.execute(select(SigningKey).order_by(SigningKey.created_at)).scalars()
    return {"keys": [public_jwk(b64url_decode(k.public_key)) for k in keys]}
