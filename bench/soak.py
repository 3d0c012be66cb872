"""Soak: a steady load on one real ``provenant serve`` worker for a fixed number of requests,
sampling the worker's RSS and open file descriptors, to show memory stays bounded.

Targets (issue 10): steady-state RSS <= 150 MB per worker and growth < 1 MiB per minute.
"Steady state" starts once a tenth of the requests are done (pools, caches and lazy imports
are warm by then); growth is the least-squares slope of RSS over time from there to the end.

    .venv/bin/python bench/soak.py                        # 30,000 requests, PostgreSQL
    .venv/bin/python bench/soak.py --requests 2000 --no-write   # a quick look

Everything runs on loopback as subprocesses on free ports (the demo upstream, the gateway);
the store is a fresh database on the PostgreSQL server named by ``--postgres`` (dropped at the
end) or, with ``--sqlite``, a fresh SQLite file. Results go to bench/RESULTS.md (unless
``--no-write``) with the command, the machine, the git revision and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PROVENANT = [sys.executable, "-m", "service.cli"]
RSS_TARGET_MB = 150.0
GROWTH_TARGET_MIB_MIN = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


@dataclass
class Sample:
    t: float  # seconds since the load started
    done: int  # requests completed by then
    rss_mib: float
    fds: int


@dataclass
class Sampler:
    """Reads the worker's VmRSS and fd count from /proc every ``interval`` seconds."""

    pid: int
    interval: float
    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def read(self) -> tuple[float, int]:
        with open(f"/proc/{self.pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss_kib / 1024, len(os.listdir(f"/proc/{self.pid}/fd"))

    def sample(self) -> None:
        rss, fds = self.read()
        self.samples.append(Sample(time.monotonic() - self.started, self.done, rss, fds))

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


async def load(
    url: str, key: str, total: int, concurrency: int, stream_every: int, sampler: Sampler
) -> tuple[list[float], int]:
    """``total`` chat completions from ``concurrency`` workers; every ``stream_every``-th is
    streamed. Returns the latencies (ms) of successful answers and the error count."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                stream = stream_every > 0 and i % stream_every == 0
                body = orjson.dumps(
                    {
                        "model": "echo",
                        "stream": stream,
                        "messages": [{"role": "user", "content": f"soak {i} {uuid.uuid4().hex}"}],
                    }
                )
                started = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/v1/chat/completions", data=body, headers=headers
                    ) as resp:
                        raw = await resp.read()
                        good = resp.status == 200 and (
                            raw.endswith(b"data: [DONE]\n\n") if stream else b"audit_id" in raw
                        )
                except aiohttp.ClientError:
                    good = False
                if good:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1
                sampler.done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def slope_mib_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(s.t for s in samples) / n
    mr = sum(s.rss_mib for s in samples) / n
    var = sum((s.t - mt) ** 2 for s in samples)
    if var == 0:
        return 0.0
    cov = sum((s.t - mt) * (s.rss_mib - mr) for s in samples)
    return cov / var * 60


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream-every", type=int, default=4, help="every Nth request streams")
    parser.add_argument("--sample-interval", type=float, default=1.0)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "PROVENANT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="server (admin URL) on which a fresh database is made",
    )
    parser.add_argument("--sqlite", action="store_true", help="a fresh SQLite file instead")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="provenant-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    db_name = f"provenant_soak_{uuid.uuid4().hex[:8]}"
    admin = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    if args.sqlite:
        database_url = f"sqlite:///{work / 'provenant.db'}"
    else:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        database_url = admin.rsplit("/", 1)[0] + f"/{db_name}"
    try:
        up_port, gw_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
        routes = work / "routes.yaml"
        routes.write_text(
            f"routes:\n  - name: echo\n    upstream: http://127.0.0.1:{up_port}/v1\n"
            "    upstream_model: echo-1\n"
        )
        env.update(
            PROVENANT_DATABASE_URL=database_url,
            PROVENANT_CONFIG=str(routes),
            PROVENANT_DATA_DIR=str(work / "data"),
            PROVENANT_POLICY_BUNDLE="none",
        )
        log = (work / "serve.log").open("wb")
        procs.append(
            subprocess.Popen(
                [*PROVENANT, "demo-upstream", "--port", str(up_port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        subprocess.run([*PROVENANT, "migrate"], env=env, check=True, capture_output=True)
        made = subprocess.run(
            [*PROVENANT, "keys", "create", "--tenant", "soak", "--role", "app"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        gateway = subprocess.Popen(
            [*PROVENANT, "serve", "--port", str(gw_port)], env=env, stdout=log, stderr=log
        )
        procs.append(gateway)
        url = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{url}/readyz", gateway)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", procs[0])

        sampler = Sampler(gateway.pid, args.sample_interval)
        rss_ready, fds_ready = sampler.read()
        sampler.started = time.monotonic()
        sampler.sample()
        threading.Thread(target=sampler.run, daemon=True).start()
        began = time.monotonic()
        latencies, errors = asyncio.run(
            load(url, key, args.requests, args.concurrency, args.stream_every, sampler)
        )
        elapsed = time.monotonic() - began
        sampler.stop()
        sampler.sample()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.sqlite:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    samples = sampler.samples
    warm = [s for s in samples if s.done >= args.requests // 10] or samples
    growth = slope_mib_per_min(warm)
    steady_max = max(s.rss_mib for s in warm)
    minutes = (warm[-1].t - warm[0].t) / 60
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    ok = steady_max <= RSS_TARGET_MB * 1e6 / 2**20 and growth < GROWTH_TARGET_MIB_MIN
    store = "SQLite" if args.sqlite else "PostgreSQL"
    table = "\n".join(
        [
            "| measure | value |",
            "|---|---|",
            f"| requests (errors) | {args.requests} ({errors}) |",
            f"| concurrency / streamed | {args.concurrency} / every {args.stream_every}th |",
            f"| duration | {elapsed:.1f} s |",
            f"| throughput | {len(latencies) / elapsed:.0f} answers/s |",
            f"| latency p50 / p99 | {percentile(latencies, 0.5):.2f} / "
            f"{percentile(latencies, 0.99):.2f} ms |",
            f"| RSS at ready / after warm-up / end | {rss_ready:.1f} / {warm[0].rss_mib:.1f} / "
            f"{samples[-1].rss_mib:.1f} MiB |",
            f"| steady-state RSS max (target <= {RSS_TARGET_MB:.0f} MB = "
            f"{RSS_TARGET_MB * 1e6 / 2**20:.0f} MiB) | {steady_max:.1f} MiB |",
            f"| RSS growth after warm-up (target < {GROWTH_TARGET_MIB_MIN:g} MiB/min) | "
            f"{growth:+.3f} MiB/min over {minutes:.1f} min ({len(warm)} samples) |",
            f"| open fds at ready / end / max | {fds_ready} / {samples[-1].fds} / "
            f"{max(s.fds for s in samples)} |",
            f"| targets met | {'yes' if ok else 'NO'} |",
        ]
    )
    command = shlex.join(["python", "bench/soak.py", *sys.argv[1:]])
    section = (
        f"\n## Soak, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"One `provenant serve` worker (1 process) on {store}, the demo upstream, load from "
        f"aiohttp in the same machine. Command: `{command}`; code `{rev}`; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average before the end {loadavg}.\n\n"
        f"{table}\n"
    )
    print(section)
    if not args.no_write:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write(section)
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
