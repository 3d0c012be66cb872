"""The embedded default registry (MLflow's SQLite store at ``./data/mlflow.db``) and
``provenant models sync`` as an operator runs it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import Settings, load_routes
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from tests.conftest import new_tenant
from tests.support.mlflow import Registry
from tests.support.servers import GatewayServer, UpstreamServer

# MLflow's SQL store maps with a loader strategy SQLAlchemy 2.1 deprecates; harmless here
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")


def sync(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "sync", "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_models_sync_and_the_gateway_resolve_through_the_default_sqlite_store(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    registry = Registry(f"sqlite:///{tmp_path}/data/mlflow.db")  # what ./data/mlflow.db is
    name = registry.new_model()
    v1 = registry.add_version(name, adapter="cli-v1", dataset="tickets-2026-09")
    registry.set_alias(name, "production", v1.version)
    (tmp_path / "provenant.yaml").write_text(
        "routes:\n"
        f"  - name: bot\n    upstream: {upstream.base_url}\n"
        f"    upstream_model_from: tag:serving_name\n"
        f"    registry: {{model: {name}, alias: production}}\n"
        f"  - name: typo\n    upstream: http://127.0.0.1:9/v1\n"
        f"    registry: {{model: {name}-nope, version: 3}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVENANT_", "MLFLOW_"))}
    env["PROVENANT_DATABASE_URL"] = f"sqlite:///{tmp_path}/data/provenant.db"
    upgrade(env["PROVENANT_DATABASE_URL"])

    first = sync(tmp_path, env)
    assert first.returncode == 1, first.stderr  # one route does not resolve
    bot, typo = (json.loads(line) for line in first.stdout.splitlines())
    assert (bot["route"], bot["version"], bot["run_id"]) == ("bot", v1.version, v1.run_id)
    assert bot["upstream_model"] == "cli-v1" and bot["new"] is True
    assert typo["route"] == "typo" and f"{name}-nope" in typo["error"]
    assert "RESOURCE_DOES_NOT_EXIST" in typo["error"]

    # the gateway, started the same way from the same directory, finds the same content and
    # so the same snapshot row (insert-once by content hash)
    engine = make_engine(env["PROVENANT_DATABASE_URL"])
    keys = new_tenant(make_sessionmaker(engine))
    engine.dispose()
    settings = Settings(
        database_url=env["PROVENANT_DATABASE_URL"], data_dir=tmp_path / "data"
    )  # default tracking URI: sqlite:///./data/mlflow.db
    routes = load_routes(tmp_path / "provenant.yaml")
    with contextlib.chdir(tmp_path):
        server = GatewayServer(create_app(settings, routes)).start()
        try:
            resp = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "bot", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {keys.app}"},
                timeout=30,
            )
            ready = httpx.get(f"{server.url}/readyz").json()
        finally:
            server.stop()
    assert resp.status_code == 200, resp.text
    model = resp.json()["provenance"]["model"]
    assert model["snapshot_id"] == bot["snapshot_id"]
    assert model["tracking_uri"] == "sqlite:///./data/mlflow.db"
    assert upstream.requests[-1]["body"]["model"] == "cli-v1"
    states = {r["uri"]: r["state"] for r in ready["checks"]["model_registries"]}
    assert states == {"sqlite:///./data/mlflow.db": "unavailable"}  # the typo route
