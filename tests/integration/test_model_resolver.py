"""The resolver's cache rules, on a clock the test moves: refresh ahead with one call at a time,
no registry call per request while it fails, stale within max staleness, then 503 (or not).

The real resolver and snapshot store (SQLite built by the migrations); MLflow is replaced by a
registry that answers what the test says, counting calls (the real MLflow path is covered by
test_model_lineage.py against a real server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.config import OpenAIRoute, RegistryLink, Route
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.errors import LineageUnavailable, RegistryError
from service.provenance.registry import Resolution
from service.provenance.resolver import ModelResolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Registry:
    """Answers with ``version`` (or raises while ``down``), counting calls."""

    def __init__(self, uri: str) -> None:
        self.display_uri = uri
        self.version = "1"
        self.down = False
        self.calls = 0

    def resolve(self, link: RegistryLink, upstream_model_from: str | None) -> Resolution:
        self.calls += 1
        if self.down:
            raise RegistryError("registry unreachable")
        content = {
            "registry": "mlflow",
            "tracking_uri": self.display_uri,
            "name": link.model,
            "version": self.version,
            "alias": link.alias,
            "run_id": f"run-{self.version}",
        }
        return Resolution(content, f"adapter-{self.version}")


def route(name: str, **link: Any) -> OpenAIRoute:
    return OpenAIRoute(
        name=name,
        upstream="http://127.0.0.1:9/v1",
        upstream_model_from="tag:serving_name",
        registry=RegistryLink(model=f"m-{name}", alias="production", **link),
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Clock, dict[str, Registry], Any]:
    url = f"sqlite:///{tmp_path}/provenant.db"
    upgrade(url)
    return Clock(), {}, make_engine(url)


def resolver(setup: tuple[Clock, dict[str, Registry], Any], *routes: Route) -> ModelResolver:
    clock, registries, engine = setup

    def make(uri: str) -> Any:
        return registries.setdefault(uri, Registry(uri))

    return ModelResolver(
        {r.name: r for r in routes},
        engine,
        default_tracking_uri="http://mlflow",
        ttl_s=30,
        max_staleness_s=600,
        clock=clock,
        make_registry=make,
    )


async def settle() -> None:
    for _ in range(50):  # let worker-thread refreshes land
        await asyncio.sleep(0.01)


def test_refresh_ahead_is_one_call_per_window_and_moves_with_the_alias(setup: Any) -> None:
    clock = setup[0]

    async def scenario() -> None:
        models = resolver(setup, route("a"))
        assert (await models.refresh_all()) == {"a": None}
        reg = setup[1]["http://mlflow"]
        first = models.current("a")
        assert first is not None and first.upstream_model == "adapter-1" and not first.stale

        clock.now += 10  # under half the TTL: no registry call at all
        assert all(models.current("a") is first for _ in range(100))
        assert reg.calls == 1

        reg.version = "2"
        clock.now += 6  # past half the TTL: the old snapshot is served, one refresh starts
        assert all(models.current("a") is first for _ in range(100))
        await settle()
        assert reg.calls == 2
        moved = models.current("a")
        assert moved is not None and moved.snapshot.content["version"] == "2"
        assert moved.upstream_model == "adapter-2"

    asyncio.run(scenario())


def test_a_failing_registry_is_not_called_per_request_and_stale_turns_into_503(
    setup: Any,
) -> None:
    clock = setup[0]

    async def scenario() -> None:
        models = resolver(
            setup,
            route("strict", max_staleness_s=120),
            route("lenient", max_staleness_s=120, beyond_max_staleness="serve_stale"),
        )
        await models.refresh_all()
        reg = setup[1]["http://mlflow"]
        reg.down = True
        calls = reg.calls

        clock.now += 31  # past the TTL: the first request tries once, then serves stale
        served = await models.resolve("strict")
        assert served.stale and served.snapshot.content["version"] == "1"
        assert reg.calls == calls + 1
        for _ in range(50):  # within the retry pause: no call, stale at once
            assert models.current("strict") is None
            assert (await models.resolve("strict")).stale
        assert reg.calls == calls + 1
        assert models.status("strict")["state"] == "stale"

        clock.now += 100  # 131 s unconfirmed > 120 s max staleness
        with pytest.raises(LineageUnavailable, match="max staleness"):
            await models.resolve("strict")
        assert (await models.resolve("lenient")).stale  # relaxed: still served, flagged
        assert models.status("strict")["state"] == "unavailable"
        assert {r["state"] for r in models.registries()} == {"unavailable"}

        reg.down = False
        clock.now += 20  # past the retry pause: the next request refreshes, fresh again
        back = await models.resolve("strict")
        assert not back.stale
        await models.aclose()

    asyncio.run(scenario())


def test_a_route_that_never_resolved_fails_closed(setup: Any) -> None:
    async def scenario() -> None:
        models = resolver(setup, route("cold"))
        setup[1].setdefault("http://mlflow", Registry("http://mlflow")).down = True
        assert (await models.refresh_all())["cold"] == "registry unreachable"
        with pytest.raises(LineageUnavailable, match="registry unreachable"):
            await models.resolve("cold")
        assert models.status("cold")["state"] == "unavailable"

    asyncio.run(scenario())
