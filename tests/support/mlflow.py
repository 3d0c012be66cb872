"""A real ``mlflow server`` on loopback (SQLite backend store in a temp folder), and helpers that
register fine-tuned model versions the way a training pipeline would: a run with params and an
input dataset, a model version from that run with tags, an alias."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MLFLOW = Path(sys.executable).parent / "mlflow"


# looked up in the parent: between fork and exec the child only makes the system calls
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _own_group() -> None:
    """In the child: its own process group (stopped as a whole), and on Linux a SIGTERM when
    the test process dies without stopping it (a killed test run leaves no server behind)."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MlflowServer:
    """``mlflow server`` as a subprocess (its own process group, killed at stop)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / "mlflow-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> MlflowServer:
        """Start the process; ``wait_ready`` waits for it (start early, wait when needed)."""
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        cmd = [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_own_group
            )
        return self

    def wait_ready(self, timeout: float = 180.0) -> MlflowServer:
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not up after {timeout:.0f}s")

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._proc = None


@dataclass(frozen=True)
class Version:
    """A registered version as the tests know it."""

    name: str
    version: str
    run_id: str
    adapter: str
    dataset: str
    digest: str


class Registry:
    """Registers fine-tuned model versions through the official client."""

    def __init__(self, tracking_uri: str) -> None:
        # MLflow's client retries a dead server for minutes by default: fail a test instead
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.client: Any = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.experiment = self.client.create_experiment(f"fine-tunes-{uuid.uuid4().hex[:8]}")

    def new_model(self, prefix: str = "support-bot") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(name)
        return name

    def add_version(
        self, name: str, *, adapter: str, dataset: str, base_model: str = "llama-3-8b"
    ) -> Version:
        """A training run (params, an input dataset with a digest) and a version from it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run = self.client.create_run(self.experiment, run_name=f"train-{adapter}")
        run_id = run.info.run_id
        self.client.log_param(run_id, "base_model", base_model)
        self.client.log_param(run_id, "lora_rank", "16")
        digest = uuid.uuid4().hex[:16]
        self.client.log_inputs(
            run_id,
            [
                DatasetInput(
                    Dataset(
                        name=dataset,
                        digest=digest,
                        source_type="s3",
                        source=f'{{"uri": "s3://datasets/{dataset}.parquet"}}',
                    ),
                    tags=[InputTag("mlflow.data.context", "training")],
                )
            ],
        )
        self.client.set_terminated(run_id)
        mv = self.client.create_model_version(
            name,
            source=f"runs:/{run_id}/adapter",
            run_id=run_id,
            tags={"adapter_name": adapter, "serving_name": adapter},
            await_creation_for=0,
        )
        return Version(name, str(mv.version), run_id, adapter, dataset, digest)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)
