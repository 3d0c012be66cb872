"""Proxy benchmark: the upstream directly, a bare proxy, Provenant (SQLite, PostgreSQL), LiteLLM.

Everything runs on this machine, on loopback, one target after another in the same run:

* ``direct``          the demo upstream itself (``provenant demo-upstream``), no proxy;
* ``bare``            ``bench/bare_proxy.py`` with aiohttp: the floor any Python proxy pays;
* ``bare-httpx``      the same bare proxy with httpx, to show why Provenant uses aiohttp;
* ``provenant-sqlite``   ``provenant serve`` (1 worker), durable records on SQLite (WAL, FULL);
* ``provenant-postgres`` ``provenant serve`` (1 worker), durable records on PostgreSQL;
* ``provenant-*-wN``     the same with ``--workers N``, only with ``--provenant-workers 1,N``;
* ``litellm``         LiteLLM's proxy, installed into ``bench/.work/litellm-venv``,
                      ``--num_workers`` = CPUs as its docs advise.

Load comes from wrk (Debian package ``wrk``) with a Lua script that POSTs a small non-streamed chat
request. Scenarios:

a. concurrency 1 (``wrk -t1 -c1``), 0 ms upstream: p50/p99 and the latency added over direct;
b. concurrency 1, 20 ms upstream (the demo upstream's ``slow-20`` model): p50 ratio vs direct;
c. 64 connections (``wrk -t1 -c64``), 0 ms upstream: requests/s and the ratio to the bare proxy;
d. bare proxy with httpx vs aiohttp at 64 connections (the upstream-client choice).

Usage: ``.venv/bin/python bench/proxy.py [--duration 10] [--skip-litellm]`` (see ``--help``).
The tables are printed and appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
VENV_BIN = Path(sys.executable).parent
PROVENANT = str(VENV_BIN / "provenant")
LITELLM_VENV = WORK / "litellm-venv"
RESULTS = BENCH / "RESULTS.md"

MODEL_FAST = "echo-1"  # the demo upstream answers at once (plus --delay-ms, 0 here)
MODEL_SLOW = "slow-20"  # the demo upstream waits 20 ms, then answers
LITELLM_KEY = "sk-provenant-bench"

# targets for Provenant, from the acceptance item
TARGET_ADDED_P50_MS = 1.5
TARGET_ADDED_P99_MS = 4.0
TARGET_SLOW_RATIO = 1.08
TARGET_THROUGHPUT_RATIO = 0.8


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------


class Processes:
    """Every subprocess the benchmark starts, each in its own process group, all killed at exit."""

    def __init__(self, log_dir: Path, servers_cpus: str | None) -> None:
        self.log_dir = log_dir
        self.servers_cpus = servers_cpus
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        if self.servers_cpus:
            cmd = ["taskset", "-c", self.servers_cpus, *cmd]
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        log(f"start {name}: {shlex.join(cmd)}")
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
        out.close()
        self._procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def error_lines(self, name: str) -> int:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return 0
        text = path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if line.startswith(("ERROR", "Traceback")))

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group (uvicorn/LiteLLM workers too), SIGKILL if it lingers."""
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # workers that outlived their parent are still in the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in process group ``pgid`` (from /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # field 5, pgrp
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / _CLK_TCK


def group_peak_rss_mib(pgid: int) -> float:
    """Largest peak resident set (VmHWM) among the live processes of group ``pgid``, MiB."""
    peak = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if match:
            peak = max(peak, int(match.group(1)))
    return peak / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def chat_body(model: str) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Say hello to the benchmark."},
            ],
            "max_tokens": 16,
        },
        separators=(",", ":"),
    ).encode()


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_chat(url: str, model: str, key: str | None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=chat_body(model), headers=headers, method="POST")
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(
    procs: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    url: str,
    key: str | None,
    timeout: float,
) -> None:
    """Wait until a chat request through ``url`` answers 200 (both models)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}; log tail:\n{procs.log_tail(name)}"
            )
        try:
            status, body = post_chat(url, MODEL_FAST, key)
            if status == 200:
                status, body = post_chat(url, MODEL_SLOW, key)
                if status == 200:
                    return
            last = f"HTTP {status}: {body[:300]!r}"
        except (OSError, urllib.error.URLError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise RuntimeError(
        f"{name} not ready after {timeout:.0f}s ({last}); log:\n{procs.log_tail(name)}"
    )


# -- wrk -----------------------------------------------------------------------------------------

_LUA = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
end
"""


def lua_script(directory: Path, target: str, model: str, key: str | None) -> Path:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    path = directory / f"post-{target}-{model}.lua"
    path.write_text(_LUA.format(body=chat_body(model).decode(), auth=auth))
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_latency_distribution(text: str) -> dict[str, float]:
    """The ``--latency`` block of wrk's output as {percent: ms}."""
    out: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[pct] = float(value) * _UNITS[unit]
    return out


@dataclass
class Measurement:
    target: str
    scenario: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    errors: int
    non2xx: int
    cpu_us_per_req: float | None = None
    dist: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.non2xx == 0 and self.requests > 0


@dataclass
class Runner:
    wrk: str
    wrk_cpus: str | None
    duration: float
    warmup: float
    lua_dir: Path
    raw_log: Path
    measurements: list[Measurement] = field(default_factory=list)

    def _wrk(self, url: str, lua: Path, connections: int, duration: float) -> str:
        cmd = [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(lua),
            url,
        ]
        if self.wrk_cpus:
            cmd = ["taskset", "-c", self.wrk_cpus, *cmd]
        res = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=duration + 60
        )
        with self.raw_log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr or res.stdout}")
        return res.stdout

    def measure(
        self,
        target: str,
        scenario: str,
        url: str,
        model: str,
        key: str | None,
        connections: int,
        pgid: int | None = None,
    ) -> Measurement:
        lua = lua_script(self.lua_dir, target, model, key)
        if self.warmup > 0:
            self._wrk(url, lua, connections, self.warmup)
        cpu0 = group_cpu_seconds(pgid) if pgid else None
        out = self._wrk(url, lua, connections, self.duration)
        cpu1 = group_cpu_seconds(pgid) if pgid else None
        match = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
        if not match:
            raise RuntimeError(f"could not parse wrk output:\n{out}")
        d = json.loads(match.group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
        m = Measurement(
            target=target,
            scenario=scenario,
            connections=connections,
            duration_s=d["duration_us"] / 1e6,
            requests=d["requests"],
            rps=d["requests"] / (d["duration_us"] / 1e6),
            p50_ms=d["p50_us"] / 1000,
            p90_ms=d["p90_us"] / 1000,
            p99_ms=d["p99_us"] / 1000,
            p999_ms=d["p999_us"] / 1000,
            max_ms=d["max_us"] / 1000,
            mean_ms=d["mean_us"] / 1000,
            errors=errors,
            non2xx=int(non2xx.group(1)) if non2xx else 0,
            dist=parse_latency_distribution(out),
        )
        if cpu0 is not None and cpu1 is not None and m.requests:
            m.cpu_us_per_req = (cpu1 - cpu0) / m.requests * 1e6
        flag = "" if m.ok else f"  !! errors={m.errors} non2xx={m.non2xx}"
        log(
            f"  {target:20s} {scenario:5s} c={connections:<3d} {m.rps:8.0f} rps  "
            f"p50 {m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.3f} ms  "
            f"cpu {fmt(m.cpu_us_per_req, 0)} us/req{flag}"
        )
        self.measurements.append(m)
        return m


# -- targets -------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    key: str | None
    proc: subprocess.Popen[bytes] | None
    scenarios: tuple[str, ...]
    info: str = ""
    after: Any = None  # callable returning a note once measured (e.g. durable row count)


def provenant_env(db_url: str, routes: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PROVENANT_DATABASE_URL=db_url,
        PROVENANT_CONFIG=str(routes),
        PROVENANT_DATA_DIR=str(data_dir),
    )
    return env


def write_routes(path: Path, upstream: str) -> None:
    path.write_text(
        "routes:\n"
        + "".join(
            f"  - name: {model}\n    kind: openai\n    upstream: {upstream}\n"
            for model in (MODEL_FAST, MODEL_SLOW)
        )
    )


def start_provenant(
    procs: Processes,
    name: str,
    db_url: str,
    tmp: Path,
    upstream: str,
    ready_timeout: float,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    code: Path | None = None,
) -> Target:
    """``provenant serve`` set up as an operator would; ``code``: run the ``service`` package
    extracted there (``--baseline``) instead of this checkout's."""
    data_dir = tmp / name
    data_dir.mkdir(parents=True, exist_ok=True)
    routes = data_dir / "routes.yaml"
    write_routes(routes, upstream)
    env = provenant_env(db_url, routes, data_dir)
    env.update(extra_env or {})
    provenant, cwd = [PROVENANT], ROOT
    if code is not None:
        provenant, cwd = [sys.executable, "-m", "service.cli"], code
        env["PYTHONPATH"] = str(code)
    subprocess.run([*provenant, "migrate"], env=env, check=True, cwd=cwd, capture_output=True)
    created = subprocess.run(
        [*provenant, "keys", "create", "--tenant", "bench", "--role", "app"],
        env=env,
        check=True,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    cmd = [*provenant, "serve", "--port", str(port), "--workers", str(workers)]
    proc = procs.start(name, cmd, env, cwd)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready(procs, name, proc, url, key, ready_timeout)
    info = "1 worker (one process)" if workers == 1 else f"{workers} workers (uvicorn processes)"
    return Target(name, url, key, proc, ("a", "b", "c"), info=info)


def reset_postgres(admin_url: str, dbname: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')


def count_sqlite(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_records").fetchone()[0])


def count_postgres(url: str) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM audit_records").fetchone()
        return int(row[0]) if row else 0


def sink_counts(url: str) -> dict[str, int]:
    """What ``otlp_sink.py`` at ``url`` has received so far."""
    with _NO_PROXY_OPENER.open(f"{url}/count", timeout=5) as resp:
        counts: dict[str, int] = json.loads(resp.read())
    return counts


def start_demo_upstream(procs: Processes) -> str:
    """The demo upstream (answers at once) on a free loopback port, ready; its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = procs.start(
        "upstream", [PROVENANT, "demo-upstream", "--port", str(port)], dict(os.environ)
    )
    wait_ready(procs, "upstream", proc, f"{url}/chat/completions", None, 30)
    return url


def extract_revision(rev: str, into: Path) -> Path:
    """The ``service`` package, migrations and policy bundles at git revision ``rev``, in
    ``into`` (the gateway loads ``policies/default.yaml`` from its working directory: without
    it the revision would run with no policies and look faster than it is)."""
    into.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    paths = [p for p in ("service", "migrations", "policies") if p in listed]
    archive = subprocess.run(
        ["git", "archive", rev, *paths], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def ensure_litellm(spec: str) -> tuple[Path, float]:
    """LiteLLM's proxy in its own virtualenv (installed on first use); returns (bin, seconds)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe, 0.0
    started = time.monotonic()
    log(f"installing {spec} into {LITELLM_VENV} (first run only)")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, spec], check=True)
    return exe, time.monotonic() - started


def litellm_version() -> str:
    res = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "show", "litellm"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^Version: (.+)$", res.stdout, re.M)
    return match.group(1) if match else "?"


def start_litellm(
    procs: Processes, exe: Path, tmp: Path, upstream: str, workers: int, ready_timeout: float
) -> Target:
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: {model}\n"
            f"    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {upstream}\n"
            f"      api_key: sk-upstream-unused\n"
            for model in (MODEL_FAST, MODEL_SLOW)
        )
        + "general_settings:\n"
        + f"  master_key: {LITELLM_KEY}\n"
        + "litellm_settings:\n"
        + "  set_verbose: false\n"
        + "  json_logs: true\n"
    )
    env = dict(os.environ)
    env.update(
        # keep LiteLLM on loopback: no remote model-cost map, no telemetry
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_MODE="PRODUCTION",
        LITELLM_LOG="ERROR",
        # anything that would still try a remote host hits a closed loopback port instead
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for var in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST"):
        env.pop(var, None)
    port = free_port()
    cmd = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]
    proc = procs.start("litellm", cmd, env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready(procs, "litellm", proc, url, LITELLM_KEY, ready_timeout)
    return Target(
        "litellm",
        url,
        LITELLM_KEY,
        proc,
        ("a", "b", "c"),
        info=f"{workers} workers, litellm {litellm_version()}, master key, no database",
    )


# -- report --------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def passfail(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def build_report(
    runner: Runner,
    targets_info: dict[str, str],
    notes: list[str],
    command: str,
    elapsed_s: float,
    context: dict[str, str],
) -> str:
    by: dict[tuple[str, str], Measurement] = {
        (m.target, m.scenario): m for m in runner.measurements
    }

    def get(target: str, scenario: str) -> Measurement | None:
        return by.get((target, scenario))

    order = [t for t in targets_info if any(m.target == t for m in runner.measurements)]
    lines: list[str] = []
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += [
        f"## Run of {now}",
        "",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"wrk `{runner.wrk}`",
        f"- per measurement: {runner.warmup:g} s warm-up then {runner.duration:g} s measured, "
        "`wrk -t1` with a Lua POST of a small non-streamed chat request",
        f"- code: {context['revision']}",
        f"- CPU placement: {context['pinning']}",
        f"- load average before the run: {context['load_before']}; after: {context['load_after']}",
        f"- whole run took {elapsed_s:.0f} s",
        "- targets:",
        *(f"  - `{t}`: {info}" for t, info in targets_info.items() if info),
        "",
    ]
    if context.get("warning"):
        lines += [f"**Warning:** {context['warning']}", ""]
    direct_a, direct_b = get("direct", "a"), get("direct", "b")
    bare_c = get("bare", "c")

    lines += [
        "### (a) latency at concurrency 1, 0 ms upstream (`wrk -t1 -c1`)",
        "",
        "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in order:
        m = get(t, "a")
        if m is None:
            continue
        added50 = m.p50_ms - direct_a.p50_ms if direct_a and t != "direct" else None
        added99 = m.p99_ms - direct_a.p99_ms if direct_a and t != "direct" else None
        lines.append(
            f"| {t} | {fmt(m.p50_ms, 3)} | {fmt(m.p99_ms, 3)} | {fmt(added50, 3)} | "
            f"{fmt(added99, 3)} | {m.rps:.0f} | {fmt(m.cpu_us_per_req, 0)} | "
            f"{m.errors + m.non2xx} |"
        )
    lines += [
        "",
        "### (b) latency at concurrency 1, 20 ms upstream (`slow-20` model, `wrk -t1 -c1`)",
        "",
        "| target | p50 ms | p99 ms | p50 / direct | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in order:
        m = get(t, "b")
        if m is None:
            continue
        ratio = m.p50_ms / direct_b.p50_ms if direct_b else None
        lines.append(
            f"| {t} | {fmt(m.p50_ms, 3)} | {fmt(m.p99_ms, 3)} | {fmt(ratio, 3)} | "
            f"{m.errors + m.non2xx} |"
        )
    lines += [
        "",
        "### (c) throughput at 64 connections, 0 ms upstream (`wrk -t1 -c64`)",
        "",
        "| target | req/s | / bare | p50 ms | p99 ms | CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in order:
        m = get(t, "c")
        if m is None:
            continue
        ratio = m.rps / bare_c.rps if bare_c else None
        lines.append(
            f"| {t} | {m.rps:.0f} | {fmt(ratio)} | {fmt(m.p50_ms)} | {fmt(m.p99_ms)} | "
            f"{fmt(m.cpu_us_per_req, 0)} | {m.errors + m.non2xx} |"
        )
    httpx_c = get("bare-httpx", "c")
    if httpx_c and bare_c:
        lines += [
            "",
            "### (d) upstream client of the bare proxy at 64 connections",
            "",
            "| client | req/s | p50 ms | p99 ms | c=1 p50 ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for client, t in (("aiohttp", "bare"), ("httpx", "bare-httpx")):
            m = get(t, "c")
            a = get(t, "a")
            if m is None:
                continue
            lines.append(
                f"| {client} | {m.rps:.0f} | {fmt(m.p50_ms)} | {fmt(m.p99_ms)} | "
                f"{fmt(a.p50_ms, 3) if a else 'n/a'} | {m.errors + m.non2xx} |"
            )
        lines.append("")
        lines.append(f"aiohttp / httpx throughput: {bare_c.rps / httpx_c.rps:.1f}x")

    lines += [
        "",
        "### Provenant against its targets",
        "",
        "| target | added p50 ≤ 1.5 ms | added p99 ≤ 4 ms | 20 ms p50 ≤ 1.08x direct | "
        "throughput ≥ 0.8x bare |",
        "|---|---|---|---|---|",
    ]
    for t in order:
        if not t.startswith("provenant"):
            continue
        a, b, c = get(t, "a"), get(t, "b"), get(t, "c")
        cells = []
        if a and direct_a:
            added = a.p50_ms - direct_a.p50_ms
            cells.append(f"{passfail(added <= TARGET_ADDED_P50_MS)} ({added:.3f} ms)")
            added = a.p99_ms - direct_a.p99_ms
            cells.append(f"{passfail(added <= TARGET_ADDED_P99_MS)} ({added:.3f} ms)")
        else:
            cells += ["n/a", "n/a"]
        if b and direct_b:
            ratio = b.p50_ms / direct_b.p50_ms
            cells.append(f"{passfail(ratio <= TARGET_SLOW_RATIO)} ({ratio:.3f}x)")
        else:
            cells.append("n/a")
        if c and bare_c:
            ratio = c.rps / bare_c.rps
            cells.append(f"{passfail(ratio >= TARGET_THROUGHPUT_RATIO)} ({ratio:.2f}x)")
        else:
            cells.append("n/a")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    untraced_c, untraced_a = get("provenant-postgres", "c"), get("provenant-postgres", "a")
    variants = ("base", "traced", "sampled")
    telemetry = [f"provenant-postgres-{v}" for v in variants if get(f"provenant-postgres-{v}", "c")]
    if untraced_c and untraced_a and telemetry:
        lines += [
            "",
            "### Telemetry: beside `provenant-postgres` (metrics on, tracing off)",
            "",
            "| target | req/s c=64 | / provenant-postgres | CPU µs/req c=64 | p50 ms c=1 | "
            "Δ p50 ms c=1 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in ("provenant-postgres", *telemetry):
            c, a = get(t, "c"), get(t, "a")
            assert c is not None
            lines.append(
                f"| {t} | {c.rps:.0f} | {c.rps / untraced_c.rps:.3f} | "
                f"{fmt(c.cpu_us_per_req, 0)} | {fmt(a.p50_ms, 3) if a else 'n/a'} | "
                f"{fmt(a.p50_ms - untraced_a.p50_ms, 3) if a else 'n/a'} |"
            )
    bad = [m for m in runner.measurements if not m.ok]
    if bad:
        lines += ["", "**Measurements with errors (their numbers are not trustworthy):**", ""]
        lines += [
            f"- {m.target} ({m.scenario}): {m.errors} socket errors, {m.non2xx} non-2xx"
            for m in bad
        ]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)


_RESULTS_HEADER = """\
# Proxy benchmark results

Produced by `bench/proxy.py` (see `bench/README.md`); each run appends a section. Latencies are
wrk's (client-side, full request); "added" is a target's percentile minus the upstream's own
percentile measured directly in the same run.

"""


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Proxy benchmark (see bench/README.md).")
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    p.add_argument(
        "--warmup", type=int, default=2, help="warm-up seconds per measurement (0: none)"
    )
    p.add_argument("--connections", type=int, default=64, help="connections for throughput")
    p.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--skip-postgres", action="store_true", help="leave PostgreSQL out")
    p.add_argument("--skip-sqlite", action="store_true", help="leave the SQLite targets out")
    p.add_argument(
        "--tracing",
        action="store_true",
        help="add provenant-postgres-traced: tracing on, OTLP/HTTP to a loopback sink "
        "(bench/otlp_sink.py), beside provenant-postgres (tracing off; metrics on in both)",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="add provenant-postgres-base: the gateway at git revision REV (e.g. the commit "
        "before a change), extracted with git archive, same store and settings",
    )
    p.add_argument("--skip-httpx", action="store_true", help="leave the httpx bare proxy out")
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL URL used to (re)create the benchmark database",
    )
    p.add_argument("--pg-db", default="provenant_bench", help="database created for the run")
    p.add_argument(
        "--provenant-workers",
        type=lambda v: sorted({int(n) for n in v.split(",")}),
        default=[1],
        help="comma-separated uvicorn worker counts to measure Provenant with (default 1; "
        "targets with N > 1 are named provenant-*-wN)",
    )
    p.add_argument("--litellm-spec", default="litellm[proxy]", help="pip spec for LiteLLM")
    p.add_argument(
        "--litellm-workers", type=int, default=os.cpu_count() or 1, help="default: CPU count"
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="taskset: wrk on the last CPU, every server on the others (needs ≥ 2 CPUs)",
    )
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    return p.parse_args()


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "migrations", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{rev}`" + (" with uncommitted changes in service/" if dirty else "")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    args = parse_args()
    command = shlex.join(
        [".venv/bin/python", "bench/proxy.py", *sys.argv[1:]]
        if Path(sys.executable).parent == ROOT / ".venv" / "bin"
        else [sys.executable, *sys.argv]
    )
    wrk = shutil.which("wrk")
    if wrk is None:
        log("wrk not found: install it (Debian: apt-get install -y wrk)")
        return 2
    ncpu = os.cpu_count() or 1
    wrk_cpus = servers_cpus = None
    pinning = "none (the kernel schedules wrk, upstream and proxies on all CPUs)"
    if args.pin and ncpu >= 2:
        wrk_cpus, servers_cpus = str(ncpu - 1), f"0-{ncpu - 2}"
        pinning = f"`taskset`: wrk on CPU {wrk_cpus}, upstream and proxies on CPU(s) {servers_cpus}"
    context = {"pinning": pinning, "revision": git_revision(), "load_before": load_average()}

    WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    log(f"work dir {tmp} (logs, configs, SQLite database, raw wrk output)")
    procs = Processes(tmp, servers_cpus)
    runner = Runner(wrk, wrk_cpus, args.duration, args.warmup, tmp, tmp / "wrk-raw.txt")
    targets_info: dict[str, str] = {}
    notes: list[str] = []
    started = time.monotonic()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        up = procs.start(
            "upstream",
            [PROVENANT, "demo-upstream", "--port", str(up_port), "--delay-ms", "0"],
            dict(os.environ),
        )
        wait_ready(procs, "upstream", up, f"{upstream}/chat/completions", None, 30)

        def run_target(t: Target) -> None:
            targets_info[t.name] = t.info
            log(f"measuring {t.name}")
            measured = False
            try:
                for sc in t.scenarios:
                    model = MODEL_SLOW if sc == "b" else MODEL_FAST
                    conns = args.connections if sc == "c" else 1
                    pgid = t.proc.pid if t.proc is not None else up.pid
                    runner.measure(t.name, sc, t.url, model, t.key, conns, pgid)
                    if up.poll() is not None:
                        raise RuntimeError("the upstream died during the run")
                    if t.proc is not None and t.proc.poll() is not None:
                        raise RuntimeError(f"{t.name} died during the run")
                measured = True
            finally:
                if t.proc is not None:
                    if t.name.startswith("provenant"):
                        rss = group_peak_rss_mib(t.proc.pid)
                        notes.append(f"{t.name}: peak resident memory {rss:.0f} MiB")
                    procs.stop(t.proc)  # a graceful stop: the gateway flushes its last spans
                    errors = procs.error_lines(t.name)
                    if errors:
                        notes.append(f"{t.name} logged {errors} error lines (see its log)")
            if measured and t.after is not None:
                notes.append(t.after())

        def attempt(name: str, start: Any) -> None:
            """Start and measure one target; a failure is recorded and the run goes on."""
            try:
                run_target(start())
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                if up.poll() is not None:
                    raise
                notes.append(f"{name} failed: {exc}".replace("\n", " ")[:2000])
                log(notes[-1])

        run_target(
            Target(
                "direct",
                f"{upstream}/chat/completions",
                None,
                None,
                ("a", "b", "c"),
                info="demo upstream (aiohttp), 1 process",
            )
        )

        def start_bare(name: str, client: str, scenarios: tuple[str, ...]) -> Target:
            port = free_port()
            cmd = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port)]
            cmd += ["--upstream", upstream, "--client", client]
            proc = procs.start(name, cmd, dict(os.environ))
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_ready(procs, name, proc, url, None, 30)
            return Target(name, url, None, proc, scenarios, info=f"pure ASGI + {client}, 1 worker")

        attempt("bare", lambda: start_bare("bare", "aiohttp", ("a", "b", "c")))
        if not args.skip_httpx:
            attempt("bare-httpx", lambda: start_bare("bare-httpx", "httpx", ("a", "c")))

        for workers in args.provenant_workers:
            suffix = "" if workers == 1 else f"-w{workers}"
            db = tmp / f"provenant-sqlite{suffix}" / "provenant.db"

            def start_sqlite(name: str, db: Path, workers: int) -> Target:
                t = start_provenant(procs, name, f"sqlite:///{db}", tmp, upstream, 60, workers)
                t.info += ", SQLite WAL + synchronous=FULL, record committed before each answer"
                t.after = lambda: f"{name}: {count_sqlite(db)} audit records committed"
                return t

            name = f"provenant-sqlite{suffix}"
            if not args.skip_sqlite:
                attempt(name, functools.partial(start_sqlite, name, db, workers))

            if not args.skip_postgres:
                pg_db = args.pg_db + suffix.replace("-", "_")
                pg_url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{pg_db}"

                def start_pg(name: str, pg_db: str, pg_url: str, workers: int) -> Target:
                    reset_postgres(args.pg_admin_url, pg_db)
                    t = start_provenant(procs, name, pg_url, tmp, upstream, 60, workers)
                    t.info += ", PostgreSQL (local), record committed before each answer"
                    t.after = lambda: f"{name}: {count_postgres(pg_url)} audit records committed"
                    return t

                name = f"provenant-postgres{suffix}"
                attempt(name, functools.partial(start_pg, name, pg_db, pg_url, workers))

        if not args.skip_postgres and (args.tracing or args.baseline):
            variants: list[tuple[str, dict[str, str], Path | None, str]] = []
            if args.tracing:
                sink_port = free_port()
                procs.start(
                    "otlp-sink",
                    [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(sink_port)],
                    dict(os.environ),
                )
                sink_url = f"http://127.0.0.1:{sink_port}"
                otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_SERVICE_NAME": "bench"}
                variants.append(
                    (
                        "provenant-postgres-traced",
                        otlp,
                        None,
                        "tracing on: OTLP/HTTP (http/protobuf, batch span processor defaults) "
                        "to a loopback sink that decodes every export",
                    )
                )
                variants.append(
                    (
                        "provenant-postgres-sampled",
                        {
                            **otlp,
                            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                            "OTEL_TRACES_SAMPLER_ARG": "0.1",
                        },
                        None,
                        "tracing on, 10 % of traces sampled (`parentbased_traceidratio`), "
                        "same sink",
                    )
                )
            if args.baseline:
                code = extract_revision(args.baseline, tmp / "baseline")
                variants.append(
                    ("provenant-postgres-base", {}, code, f"the code at `{args.baseline}`")
                )

            def start_variant(
                name: str, extra: dict[str, str], code: Path | None, what: str
            ) -> Target:
                pg_db = f"{args.pg_db}_{name.rsplit('-', 1)[1]}"
                pg_url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{pg_db}"
                reset_postgres(args.pg_admin_url, pg_db)
                t = start_provenant(procs, name, pg_url, tmp, upstream, 60, 1, extra, code)
                t.info += f", PostgreSQL (local), {what}"
                sink = extra.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                if sink is not None:
                    before = sink_counts(sink)

                    def exported() -> str:
                        counts = sink_counts(sink)
                        spans = counts["spans"] - before["spans"]
                        exports = counts["requests"] - before["requests"]
                        records = count_postgres(pg_url)
                        # server, chat and audit-commit spans per answer
                        return (
                            f"{name}: {records} audit records committed; the sink received "
                            f"{spans} spans from it in {exports} exports "
                            f"({spans / max(records, 1):.2f} per answer; 3 when every trace is "
                            "sampled and none is dropped)"
                        )

                    t.after = exported
                else:
                    t.after = lambda: f"{name}: {count_postgres(pg_url)} audit records committed"
                return t

            for variant in variants:
                attempt(variant[0], functools.partial(start_variant, *variant))

        if not args.skip_litellm:

            def start_lite() -> Target:
                exe, install_s = ensure_litellm(args.litellm_spec)
                if install_s:
                    notes.append(
                        f"LiteLLM installed in {install_s:.0f} s (included in the run time)"
                    )
                return start_litellm(procs, exe, tmp, upstream, args.litellm_workers, 240)

            attempt("litellm", start_lite)
    except KeyboardInterrupt:
        log("interrupted: stopping every subprocess")
        return 130
    finally:
        procs.stop_all()

    elapsed = time.monotonic() - started
    context["load_after"] = load_average()
    busy = float(context["load_before"].split()[0])
    if busy > 0.3 * ncpu:
        context["warning"] = (
            f"the machine was busy before the run (1-min load {busy:.2f} on {ncpu} CPUs); "
            "other work competed for the CPUs and these numbers are pessimistic"
        )
    report = build_report(runner, targets_info, notes, command, elapsed, context)
    print(report)
    if not args.no_write:
        text = args.results.read_text() if args.results.exists() else _RESULTS_HEADER
        args.results.write_text(text.rstrip("\n") + "\n\n" + report)
        log(f"appended to {args.results}")
    log(f"done in {elapsed:.0f} s; raw wrk output and server logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
