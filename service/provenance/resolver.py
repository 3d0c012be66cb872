"""Which model version serves a registry-linked route right now: a TTL cache over MLflow.

The hot path is ``current(route)``: a dict lookup and a clock read. MLflow is only called from a
worker thread (``asyncio.to_thread``), one refresh per route at a time (single flight: concurrent
requests share it). A snapshot is *fresh* while the registry confirmed it less than ``ttl`` ago;
from half the TTL on, a request starts a refresh in the background (refresh ahead), so under
traffic no request waits for MLflow and an alias move shows within the TTL.

When the registry cannot confirm a snapshot (unreachable, or the version no longer resolves) the
route keeps serving the last snapshot, flagged ``lineage_stale``, until it is ``max_staleness``
old; then it fails closed with 503 ``lineage_unavailable`` unless the route says
``beyond_max_staleness: serve_stale``. That setting is the hook the policy engine takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from service.config import OpenAIRoute, RegistryLink, Route
from service.db.base import utcnow
from service.errors import LineageUnavailable, RegistryError
from service.provenance import snapshots
from service.provenance.registry import MlflowRegistry, Resolution
from service.provenance.snapshots import StoredSnapshot

log = logging.getLogger("provenant.models")

# a request that finds its snapshot past the TTL waits this long for the refresh it starts
# before it is served the last snapshot (flagged stale); a first resolution always waits
REFRESH_WAIT_S = 2.0
# at shutdown, how long in-flight refreshes may still take (MLflow's own timeout bounds them)
_CLOSE_WAIT_S = 30.0


@dataclass(frozen=True)
class Served:
    """The snapshot an answer is pinned to, and whether the registry could vouch for it."""

    snapshot: StoredSnapshot
    view: dict[str, Any]  # provenance.model's registry fields (built once per snapshot)
    upstream_model: str | None
    stale: bool


@dataclass
class _Slot:
    """One route's cache entry."""

    route: str
    link: RegistryLink
    upstream_model_from: str | None
    registry: MlflowRegistry
    ttl: float
    max_staleness: float
    snapshot: StoredSnapshot | None = None
    view: dict[str, Any] = field(default_factory=dict)
    upstream_model: str | None = None
    confirmed: float = 0.0  # monotonic time the last successful resolution completed
    confirmed_at: datetime | None = None
    failed: float | None = None  # monotonic time of the last failure since the last success
    error: str | None = None
    task: asyncio.Task[None] | None = None
    fresh: Served | None = None
    stale: Served | None = None


class ModelResolver:
    """The registry-linked routes' current snapshots, refreshed off the event loop."""

    def __init__(
        self,
        routes: dict[str, Route],
        engine: Engine,
        *,
        default_tracking_uri: str,
        ttl_s: float,
        max_staleness_s: float,
        clock: Callable[[], float] = time.monotonic,
        make_registry: Callable[[str], MlflowRegistry] = MlflowRegistry,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._registries: dict[str, MlflowRegistry] = {}
        self._slots: dict[str, _Slot] = {}
        self._closed = False
        for route in routes.values():
            if not isinstance(route, OpenAIRoute) or route.registry is None:
                continue
            link = route.registry
            uri = link.tracking_uri or default_tracking_uri
            if uri not in self._registries:
                self._registries[uri] = make_registry(uri)
            registry = self._registries[uri]
            self._slots[route.name] = _Slot(
                route.name,
                link,
                route.upstream_model_from,
                registry,
                link.cache_ttl_s if link.cache_ttl_s is not None else ttl_s,
                link.max_staleness_s if link.max_staleness_s is not None else max_staleness_s,
            )

    @property
    def routes(self) -> list[str]:
        """Names of the registry-linked routes."""
        return list(self._slots)

    def current(self, route: str) -> Served | None:
        """The fresh snapshot of a route, or None when the caller must ``await resolve``.

        The hot path: no I/O, no await. Past half the TTL it starts a background refresh.
        """
        slot = self._slots[route]
        served = slot.fresh
        if served is None:
            return None
        now = self._clock()
        age = now - slot.confirmed
        if age >= slot.ttl:
            return None
        if age >= slot.ttl / 2 and slot.task is None and not self._failed_lately(slot, now):
            self._start(slot)
        return served

    async def resolve(self, route: str) -> Served:
        """The snapshot to serve when ``current`` had none: waits for a refresh if worth it,
        else serves the last snapshot flagged stale, or raises LineageUnavailable."""
        slot = self._slots[route]
        if not self._failed_lately(slot, self._clock()):
            task = slot.task or self._start(slot)
            wait = None if slot.snapshot is None else REFRESH_WAIT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        served = self.current(route)
        if served is not None:
            return served
        return self._stale_or_fail(slot)

    @staticmethod
    def _failed_lately(slot: _Slot, now: float) -> bool:
        """After a failed refresh, requests serve what they can without asking MLflow again
        for half the TTL (at most 5 s): a registry that is down is not called per request."""
        return slot.failed is not None and now - slot.failed < min(slot.ttl / 2, 5.0)

    def _stale_or_fail(self, slot: _Slot) -> Served:
        if slot.snapshot is None or slot.stale is None:
            raise LineageUnavailable(
                f"model lineage of route '{slot.route}' is unavailable: "
                f"{slot.error or 'the registry has not answered yet'}"
            )
        age = self._clock() - slot.confirmed
        if age <= slot.max_staleness or slot.link.beyond_max_staleness == "serve_stale":
            return slot.stale
        raise LineageUnavailable(
            f"model lineage of route '{slot.route}' is unavailable: the registry has not "
            f"confirmed {slot.link.model} version {slot.snapshot.content.get('version')} for "
            f"{age:.0f}s (max staleness {slot.max_staleness:g}s): {slot.error or 'no answer'}"
        )

    def _start(self, slot: _Slot) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._refresh(slot))
        slot.task = task
        return task

    async def aclose(self) -> None:
        """Let in-flight refreshes finish (a worker thread cannot be cancelled) before the
        engine they write to is disposed; none start afterwards."""
        self._closed = True
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_WAIT_S)

    async def _refresh(self, slot: _Slot) -> None:
        try:
            resolution, stored = await asyncio.to_thread(self._resolve_blocking, slot)
        except Exception as exc:
            slot.failed = self._clock()
            slot.error = exc.message if isinstance(exc, RegistryError) else _describe(exc)
            log.warning("route %s: model lineage not refreshed: %s", slot.route, slot.error)
        else:
            self._install(slot, resolution, stored)
        finally:
            slot.task = None

    def _resolve_blocking(self, slot: _Slot) -> tuple[Resolution, StoredSnapshot]:
        """In a worker thread: ask MLflow, then store the snapshot (committed before use)."""
        if self._closed:
            raise RegistryError("the gateway is shutting down")
        resolution = slot.registry.resolve(slot.link, slot.upstream_model_from)
        return resolution, snapshots.store(self._engine, resolution.content)

    def _install(self, slot: _Slot, resolution: Resolution, stored: StoredSnapshot) -> None:
        if slot.snapshot is None or slot.snapshot.id != stored.id:
            if slot.snapshot is not None:
                log.info(
                    "route %s: %s version %s -> %s (snapshot %s)",
                    slot.route,
                    slot.link.model,
                    slot.snapshot.content.get("version"),
                    stored.content.get("version"),
                    stored.id,
                )
            slot.view = stored.view()
        slot.snapshot = stored
        slot.upstream_model = resolution.upstream_model
        slot.fresh = Served(stored, slot.view, resolution.upstream_model, stale=False)
        slot.stale = Served(stored, slot.view, resolution.upstream_model, stale=True)
        slot.confirmed = self._clock()
        slot.confirmed_at = utcnow()
        slot.failed = None
        slot.error = None

    async def refresh_all(self) -> dict[str, str | None]:
        """Refresh every route now (concurrently); returns each route's error, or None."""
        tasks = [slot.task or self._start(slot) for slot in self._slots.values()]
        await asyncio.gather(*(asyncio.shield(t) for t in tasks))
        return {name: slot.error for name, slot in self._slots.items()}

    def status(self, route: str) -> dict[str, Any] | None:
        """What ``GET /v1/models`` shows about a route's registry link (None: not linked).

        No registry call: an entry older than the TTL starts a background refresh, so the next
        look shows the registry's current answer.
        """
        slot = self._slots.get(route)
        if slot is None:
            return None
        now = self._clock()
        idle = now - slot.confirmed >= slot.ttl
        if idle and slot.task is None and not self._failed_lately(slot, now):
            self._start(slot)
        snap = slot.snapshot
        return {
            "registry": "mlflow",
            "tracking_uri": slot.registry.display_uri,
            "name": slot.link.model,
            "alias": slot.link.alias,
            "version": None if snap is None else snap.content.get("version"),
            "run_id": None if snap is None else snap.content.get("run_id"),
            "snapshot_id": None if snap is None else str(snap.id),
            "upstream_model": slot.upstream_model,
            "confirmed_at": slot.confirmed_at,
            "state": self._state(slot),
            "error": slot.error,
        }

    def registries(self) -> list[dict[str, Any]]:
        """Each tracking URI (without credentials) with its routes' worst state (``/readyz``)."""
        out = []
        for registry in self._registries.values():
            slots = [s for s in self._slots.values() if s.registry is registry]
            states = {self._state(s) for s in slots}
            worst = next((st for st in ("unavailable", "stale", "pending") if st in states), "ok")
            out.append(
                {"uri": registry.display_uri, "routes": [s.route for s in slots], "state": worst}
            )
        return out

    def _state(self, slot: _Slot) -> str:
        """``ok`` (the last resolution succeeded), ``pending`` (none yet), ``stale`` (the
        registry fails; the last snapshot is still served) or ``unavailable`` (503s)."""
        if slot.snapshot is None:
            return "unavailable" if slot.error else "pending"
        if slot.error is None:
            return "ok"
        age = self._clock() - slot.confirmed
        if age <= slot.max_staleness or slot.link.beyond_max_staleness == "serve_stale":
            return "stale"
        return "unavailable"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__} while storing the snapshot"
