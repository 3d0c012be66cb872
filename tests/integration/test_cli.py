"""The ``provenant`` command as an operator runs it: migrate, keys, first-start bootstrap."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.db.engine import make_engine, make_sessionmaker
from service.tenancy.keys import key_hash
from service.tenancy.models import ApiKey
from tests.support.servers import UpstreamServer

PROVENANT = [sys.executable, "-m", "service.cli"]


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PROVENANT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {
        **os.environ,
        "PROVENANT_DATABASE_URL": f"sqlite:///{tmp_path}/data/provenant.db",
        "PROVENANT_DATA_DIR": str(tmp_path / "data"),
    }
    run(environ, "migrate")
    return environ


def test_keys_create_prints_the_key_alone_on_the_last_line_and_stores_only_a_hash(
    env: dict[str, str],
) -> None:
    out = run(env, "keys", "create", "--tenant", "acme", "--role", "auditor", "--label", "ci")
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("pvn_") and " " not in key

    engine = make_engine(env["PROVENANT_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        stored = session.scalars(select(ApiKey)).one()
    engine.dispose()
    assert stored.key_sha256 == key_hash(key)
    assert stored.role == "auditor"
    db_bytes = Path(env["PROVENANT_DATABASE_URL"].removeprefix("sqlite:///")).read_bytes()
    assert key.encode() not in db_bytes

    listing = run(env, "keys", "list").stdout
    assert stored.prefix in listing and "acme" in listing and key not in listing

    run(env, "keys", "revoke", stored.prefix[:6])
    engine = make_engine(env["PROVENANT_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(ApiKey)).one().revoked_at is not None
    engine.dispose()


def test_bad_role_and_unknown_prefix_fail_clearly(env: dict[str, str]) -> None:
    bad = run(env, "keys", "create", "--tenant", "a", "--role", "root", ok=False)
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    missing = run(env, "keys", "revoke", "ffffffff", ok=False)
    assert missing.returncode == 2 and "no single key" in missing.stderr


def test_bootstrap_writes_keys_once_with_mode_0600(env: dict[str, str], tmp_path: Path) -> None:
    first = run(env, "keys", "bootstrap").stdout
    keys_file = tmp_path / "data" / "dev-keys.txt"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    lines = dict(line.split("=", 1) for line in keys_file.read_text().splitlines())
    assert set(lines) == {"app", "auditor"}
    assert lines["app"] in first and lines["auditor"] in first

    second = run(env, "keys", "bootstrap")
    assert lines["app"] not in second.stdout + second.stderr
    assert "already has keys" in second.stderr


def test_serve_in_a_fresh_process_answers_with_a_receipt_and_seals_it(
    env: dict[str, str], tmp_path: Path, upstream: UpstreamServer
) -> None:
    """What `make run` does: a new process that imported nothing else serves, records, seals."""
    key = run(env, "keys", "create", "--tenant", "acme", "--role", "app").stdout.split()[-1]
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"routes:\n  - name: echo\n    upstream: {upstream.base_url}\n    upstream_model: echo-1\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_env = {**env, "PROVENANT_CONFIG": str(routes), "PROVENANT_SEAL_INTERVAL_S": "0.2"}
    proc = subprocess.Popen(
        [*PROVENANT, "serve", "--port", str(port)],
        env=serve_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a loaded CI box starts Python slowly
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth)
        assert resp.status_code == 200, resp.text
        audit_id = resp.json()["provenance"]["audit_id"]
        assert resp.json()["provenance"]["receipt"].count(".") == 2
        while (
            httpx.get(f"{base}/v1/audit/records/{audit_id}/proof", headers=auth).status_code != 200
        ):
            assert time.monotonic() < deadline + 10, "the record was not sealed"
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert (tmp_path / "data" / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    verified = run(env, "verify")
    # key created, policy bundle loaded at start (policies/default.yaml), the answer
    assert verified.stdout.startswith("OK: 3 entries"), verified.stdout


def test_serve_refuses_a_trace_exporter_it_does_not_ship(env: dict[str, str]) -> None:
    grpc = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    grpc["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    refused = run(grpc, "serve", "--port", "1", ok=False)
    assert refused.returncode == 2
    assert "http/protobuf" in refused.stderr and "Traceback" not in refused.stderr
