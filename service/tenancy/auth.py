"""Bearer-key authentication with a short-lived cache, and the access check."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.errors import Forbidden, StoreUnavailable, Unauthenticated
from service.tenancy import repository
from service.tenancy.access import allowed_roles
from service.tenancy.keys import matches, parse_prefix
from service.tenancy.limits import RateLimiter
from service.tenancy.models import Role

_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Principal:
    """The caller: which key, which tenant, which role."""

    key_id: uuid.UUID
    key_prefix: str
    tenant_id: uuid.UUID
    tenant: str
    role: Role


@dataclass(frozen=True)
class _Entry:
    expires: float
    key_sha256: str | None
    principal: Principal | None


class KeyResolver:
    """Turns a presented key into a Principal; caches rows for ``ttl`` seconds.

    A revoked key stops working within ``ttl``. Unknown prefixes are cached too, so a flood of
    bad keys does not reach the database more than once per prefix and ttl.
    """

    def __init__(
        self, sessions: sessionmaker[Session], ttl: float, limiter: RateLimiter | None = None
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[str, _Entry] = {}
        self.limiter = limiter or RateLimiter(0, 1)

    def _load(self, prefix: str) -> _Entry:
        with self._sessions() as session:
            row = repository.key_with_tenant(session, prefix)
        expires = time.monotonic() + self._ttl
        if row is None or row[0].revoked_at is not None:
            return _Entry(expires, None, None)
        key, tenant = row
        return _Entry(
            expires,
            key.key_sha256,
            Principal(key.id, key.prefix, tenant.id, tenant.name, Role(key.role)),
        )

    async def resolve(self, presented: str) -> Principal:
        """Return the principal or raise Unauthenticated; StoreUnavailable if the DB is down."""
        prefix = parse_prefix(presented)
        if prefix is None:
            raise Unauthenticated("invalid API key")
        entry = await self._entry(prefix)
        if entry.principal is None or entry.key_sha256 is None:
            raise Unauthenticated("invalid API key")
        if not matches(presented, entry.key_sha256):
            raise Unauthenticated("invalid API key")
        return entry.principal

    async def by_prefix(self, prefix: str) -> Principal | None:
        """The principal of a live key named by its prefix (a UI session, whose signed cookie
        already proved the key once), or None if it is unknown or revoked."""
        return (await self._entry(prefix)).principal

    async def _entry(self, prefix: str) -> _Entry:
        """The key's cache entry, loaded when absent or expired (the cache stays bounded)."""
        entry = self._cache.get(prefix)
        if entry is None or entry.expires < time.monotonic():
            try:
                entry = await run_in_threadpool(self._load, prefix)
            except SQLAlchemyError as exc:
                raise StoreUnavailable("lineage store unavailable; request refused") from exc
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[prefix] = entry
        return entry

    def forget(self) -> None:
        """Drop the cache (after a revocation in this process)."""
        self._cache.clear()


async def check_access(
    resolver: KeyResolver, method: str, path: str, authorization: str
) -> Principal:
    """Authenticate an ``Authorization`` header value and check the access table for the call.

    Shared by the FastAPI dependency and the pure-ASGI chat path, so both refuse alike.
    """
    roles = allowed_roles(method, path)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    principal = await resolver.resolve(token.strip())
    if roles is None:
        raise Forbidden(f"no access rule is declared for {method} {path}")
    if principal.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles))
        raise Forbidden(f"role '{principal.role}' may not call this endpoint (needs: {allowed})")
    resolver.limiter.take(principal.key_id)
    return principal


async def authorize(request: Request) -> Principal:
    """FastAPI dependency: authenticate the bearer key and check the access table."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    resolver: KeyResolver = request.app.state.keys
    return await check_access(
        resolver, request.method, path, request.headers.get("authorization", "")
    )


CurrentPrincipal = Annotated[Principal, Depends(authorize)]
