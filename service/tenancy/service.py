"""Use cases on tenants and keys. Callers commit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.errors import InvalidRequest, NotFound
from service.lineage.events import record_event
from service.tenancy import repository
from service.tenancy.keys import key_hash, new_key
from service.tenancy.models import ApiKey, Role, Tenant

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: the plaintext exists only here, once."""

    key: str
    prefix: str
    tenant: str
    role: Role


def ensure_tenant(session: Session, name: str) -> Tenant:
    """Get a tenant by name, creating it if needed."""
    tenant = repository.tenant_by_name(session, name)
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session, *, tenant: str, role: str, label: str | None = None, actor: str = "cli"
) -> IssuedKey:
    """Create a key for a tenant (created on demand) with a role; an admin event records it."""
    try:
        parsed = Role(role)
    except ValueError as exc:
        roles = ", ".join(r.value for r in Role)
        raise InvalidRequest(f"unknown role {role!r}; use one of {roles}") from exc
    owner = ensure_tenant(session, tenant)
    prefix, plaintext = new_key()
    session.add(
        ApiKey(
            tenant_id=owner.id,
            prefix=prefix,
            key_sha256=key_hash(plaintext),
            role=parsed.value,
            label=label,
        )
    )
    session.flush()
    record_event(
        session,
        actor=actor,
        action="key.created",
        tenant_id=owner.id,
        target=prefix,
        detail={"role": parsed.value, "label": label},
    )
    return IssuedKey(key=plaintext, prefix=prefix, tenant=owner.name, role=parsed)


def revoke_key(session: Session, *, prefix: str, actor: str = "cli") -> ApiKey:
    """Revoke the one key whose prefix starts with ``prefix``; an admin event records it."""
    found = repository.keys_by_prefix_start(session, prefix) if len(prefix) >= 4 else []
    if len(found) != 1:
        raise NotFound(f"no single key matches prefix {prefix!r} ({len(found)} matches)")
    key = found[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        record_event(
            session, actor=actor, action="key.revoked", tenant_id=key.tenant_id, target=key.prefix
        )
    return key


def bootstrap_dev_keys(session: Session, *, keys_file: Path) -> list[IssuedKey]:
    """First start: give the ``default`` tenant one app and one auditor key, written 0600.

    Does nothing when the default tenant already has keys, so the keys are printed only once.
    """
    tenant = ensure_tenant(session, DEFAULT_TENANT)
    if repository.keys(session, tenant.id):
        return []
    issued = [
        create_key(session, tenant=DEFAULT_TENANT, role=role, label="dev (make run)")
        for role in (Role.app, Role.auditor)
    ]
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for k in issued:
            out.write(f"{k.role.value}={k.key}\n")
    os.chmod(keys_file, 0o600)
    return issued
