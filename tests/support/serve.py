"""A real ``provenant serve`` process on loopback, to kill, restart or stop gracefully, and
the environment it runs with (a fresh database, one signing key, a routes file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.db.engine import make_engine, make_sessionmaker
from service.integrity import signing
from service.tenancy.service import create_key
from tests.support.secrets import ISSUED

PROVENANT = [sys.executable, "-m", "service.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(database_url: str, tmp: Path, routes_yaml: str, **settings: str) -> dict[str, str]:
    """The environment of a ``provenant serve`` on ``database_url`` with these routes."""
    key_file = tmp / "signing-key.pem"
    signing.load_or_create(key_file, create=True)
    routes = tmp / "routes.yaml"
    routes.write_text(routes_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    env.update(
        PROVENANT_DATABASE_URL=database_url,
        PROVENANT_CONFIG=str(routes),
        PROVENANT_DATA_DIR=str(tmp / "data"),
        PROVENANT_SIGNING_KEY_FILE=str(key_file),
        PROVENANT_POLICY_BUNDLE="none",
        PROVENANT_RETENTION_INTERVAL_S="0",
    )
    env.update({f"PROVENANT_{k.upper()}": v for k, v in settings.items()})
    return env


def new_key(database_url: str, tenant: str, role: str) -> str:
    """A key made by the key service (what ``provenant keys create`` does)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            key = create_key(session, tenant=tenant, role=role).key
            session.commit()
    finally:
        engine.dispose()
    ISSUED.append(key)
    return key


class ServeProcess:
    """``provenant serve --port PORT``, its output in ``log``."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 120) -> ServeProcess:
        """Start and wait until ``/readyz`` answers 200 (a loaded box starts Python slowly)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*PROVENANT, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "provenant serve did not become ready"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, wait_s: float = 60) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(wait_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
