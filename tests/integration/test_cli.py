"""The ``provenant`` command as an operator runs it: migrate, keys, first-start bootstrap."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from service.db.engine import make_engine, make_sessionmaker
from service.tenancy.keys import key_hash
from service.tenancy.models import ApiKey

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
