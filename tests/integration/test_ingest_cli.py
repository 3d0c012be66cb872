"""``provenant ingest`` as an operator runs it: on its own (it opens the local vector store), and
while a gateway holds that store (it goes through the gateway's API with a temporary key)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from service.app import create_app
from service.config import ExtractiveRoute, RoutesFile, Settings
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.tenancy.models import ApiKey
from service.tenancy.service import create_key
from tests.support.servers import GatewayServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "handbook"


def provenant(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_ingest_alone_then_through_a_running_gateway(tmp_path: Path) -> None:
    docs = tmp_path / "handbook"
    shutil.copytree(SAMPLES, docs)
    data = tmp_path / "data"
    url = f"sqlite:///{data}/provenant.db"
    env = {**os.environ, "PROVENANT_DATABASE_URL": url, "PROVENANT_DATA_DIR": str(data)}
    upgrade(url)

    alone = provenant(env, "ingest", str(docs), "--collection", "handbook")
    assert alone.returncode == 0, alone.stderr
    assert "collection 'handbook': 5 created" in alone.stderr

    settings = Settings(database_url=url, data_dir=data, config=Path("unused.yaml"))
    routes = RoutesFile(routes=[ExtractiveRoute(name="handbook-assistant", collection="handbook")])
    gateway = GatewayServer(create_app(settings, routes)).start()
    try:
        (docs / "leave-policy.md").write_text(
            (docs / "leave-policy.md").read_text().replace("25 days", "27 days")
        )
        busy = provenant(
            {**env, "PROVENANT_PORT": str(gateway.port)},
            "ingest",
            str(docs),
            "--collection",
            "handbook",
        )
        assert busy.returncode == 0, busy.stderr
        assert "through http://127.0.0.1:" in busy.stderr
        assert "1 new_version, 4 unchanged" in busy.stderr

        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            temporary = session.scalars(
                select(ApiKey).where(ApiKey.label == "provenant ingest (temporary)")
            ).all()
            app_key = create_key(session, tenant="default", role="app").key
            session.commit()
        engine.dispose()
        assert len(temporary) == 1 and temporary[0].revoked_at is not None

        answer = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {app_key}"},
            json={
                "model": "handbook-assistant",
                "messages": [{"role": "user", "content": "How many days of annual leave?"}],
            },
            timeout=30,
        ).json()
        assert "27 days" in answer["choices"][0]["message"]["content"]
        cited = [s for s in answer["provenance"]["sources"] if s["cited"]]
        assert cited and cited[0]["source_uri"] == "leave-policy.md" and cited[0]["version"] == 2
    finally:
        gateway.stop()

    # the gateway is gone: rebuild the index from SQL, as after moving to a Qdrant server
    shutil.rmtree(data / "qdrant")
    rebuilt = provenant(env, "reindex")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "handbook: 6 versions" in rebuilt.stderr and "0 orphan points deleted" in rebuilt.stderr
