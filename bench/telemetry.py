"""What telemetry costs the gateway: the same PostgreSQL-backed gateway four ways, interleaved.

Targets, all ``provenant serve`` (1 worker) on their own fresh PostgreSQL database, all running
for the whole benchmark, against one demo upstream:

* ``base``     the code at ``--baseline`` (default: the commit before telemetry), no telemetry;
* ``off``      this checkout, tracing off (no exporter configured), Prometheus metrics on;
* ``traced``   tracing on, every trace sampled, OTLP/HTTP to ``otlp_sink.py`` on loopback;
* ``sampled``  tracing on, ``parentbased_traceidratio`` at 10 %, same sink.

Measurements are interleaved: each round measures every target once, in a rotated order, so a
load change on a shared machine hits all of them alike; the table gives each target's median
over the rounds and its ratio to ``off``. Per measurement: ``wrk -t1 -c64`` for ``--duration``
seconds after a warm-up (throughput, CPU µs per request of the target's processes) and ``-c1``
(p50). Appends to bench/RESULTS.md.

Usage: ``.venv/bin/python bench/telemetry.py [--rounds 3] [--duration 8] [--baseline REV]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy  # bench/proxy.py: processes, the wrk runner, the gateway set-up

BASELINE = "0f84516"  # the last commit before service/telemetry
VARIANTS = ("base", "off", "traced", "sampled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--baseline", default=BASELINE, help="git revision of the `base` target")
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "bench/telemetry.py", *sys.argv[1:]])
    wrk = shutil.which("wrk")
    if wrk is None:
        proxy.log("wrk not found: install it (Debian: apt-get install -y wrk)")
        return 2
    load_before = proxy.load_average()
    proxy.WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="telemetry-", dir=proxy.WORK))
    procs = proxy.Processes(tmp, None)
    runner = proxy.Runner(wrk, None, args.duration, args.warmup, tmp, tmp / "wrk-raw.txt")
    started = time.monotonic()
    notes: list[str] = []
    try:
        up_port = proxy.free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        up = procs.start(
            "upstream",
            [proxy.PROVENANT, "demo-upstream", "--port", str(up_port)],
            dict(os.environ),
        )
        proxy.wait_ready(procs, "upstream", up, f"{upstream}/chat/completions", None, 30)
        sink_port = proxy.free_port()
        procs.start(
            "otlp-sink",
            [sys.executable, str(proxy.BENCH / "otlp_sink.py"), "--port", str(sink_port)],
            dict(os.environ),
        )
        sink = f"http://127.0.0.1:{sink_port}"
        otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "bench"}
        setups = {
            "base": ({}, proxy.extract_revision(args.baseline, tmp / "baseline")),
            "off": ({}, None),
            "traced": (otlp, None),
            "sampled": (
                {
                    **otlp,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.1",
                },
                None,
            ),
        }
        targets: dict[str, proxy.Target] = {}
        urls: dict[str, str] = {}
        for name, (extra, code) in setups.items():
            db = f"provenant_bench_tel_{name}"
            proxy.reset_postgres(args.pg_admin_url, db)
            urls[name] = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db}"
            targets[name] = proxy.start_provenant(
                procs, name, urls[name], tmp, upstream, 60, 1, extra, code
            )
        for round_ in range(args.rounds):
            order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
            proxy.log(f"round {round_ + 1}/{args.rounds}: {', '.join(order)}")
            for name in order:
                t = targets[name]
                assert t.proc is not None
                runner.measure(name, "c", t.url, proxy.MODEL_FAST, t.key, 64, t.proc.pid)
                runner.measure(name, "a", t.url, proxy.MODEL_FAST, t.key, 1, t.proc.pid)
        for name in VARIANTS:
            t = targets[name]
            assert t.proc is not None
            notes.append(
                f"{name}: peak resident memory {proxy.group_peak_rss_mib(t.proc.pid):.0f} MiB"
            )
            procs.stop(t.proc)  # graceful: the traced gateways flush their last spans
        with proxy._NO_PROXY_OPENER.open(f"{sink}/count", timeout=5) as resp:
            counts = json.loads(resp.read())
        records = {name: proxy.count_postgres(urls[name]) for name in VARIANTS}
        notes.append(
            f"the sink received {counts['spans']} spans in {counts['requests']} exports for "
            f"{records['traced']} + {records['sampled']} answers of the traced and sampled "
            f"targets (3 spans per sampled answer; expected ≈ "
            f"{3 * records['traced'] + 0.3 * records['sampled']:.0f})"
        )
    finally:
        procs.stop_all()
    report = build(runner, args, command, time.monotonic() - started, load_before, notes)
    print(report)
    if not args.no_write:
        text = proxy.RESULTS.read_text()
        proxy.RESULTS.write_text(text.rstrip("\n") + "\n\n" + report)
    return 0


def build(
    runner: proxy.Runner,
    args: argparse.Namespace,
    command: str,
    elapsed: float,
    load_before: str,
    notes: list[str],
) -> str:
    def median(name: str, scenario: str, attr: str) -> float:
        values = [
            getattr(m, attr)
            for m in runner.measurements
            if m.target == name and m.scenario == scenario
        ]
        return statistics.median(v for v in values if v is not None)

    off_rps = median("off", "c", "rps")
    off_cpu = median("off", "c", "cpu_us_per_req")
    off_p50 = median("off", "a", "p50_ms")
    bad = [m for m in runner.measurements if not m.ok]
    lines = [
        f"## Telemetry cost, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}`",
        f"- code: {proxy.git_revision()}; `base` = `{args.baseline}`",
        f"- {args.rounds} interleaved rounds; per measurement {args.warmup} s warm-up + "
        f"{args.duration} s of `wrk -t1`; medians over the rounds",
        f"- load average before: {load_before}; after: {proxy.load_average()} "
        "(2 CPUs shared with other jobs: absolute numbers are pessimistic, compare the ratios)",
        f"- whole run took {elapsed:.0f} s",
        "",
        "| target | req/s c=64 | / off | CPU µs/req c=64 | / off | p50 ms c=1 | Δ p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        rps, cpu = median(name, "c", "rps"), median(name, "c", "cpu_us_per_req")
        p50 = median(name, "a", "p50_ms")
        lines.append(
            f"| {name} | {rps:.0f} | {rps / off_rps:.3f} | {cpu:.0f} | {cpu / off_cpu:.3f} | "
            f"{p50:.3f} | {p50 - off_p50:+.3f} |"
        )
    lines += ["", "Every measurement (req/s at c=64, in order):", ""]
    for name in VARIANTS:
        rps = [
            f"{m.rps:.0f}" for m in runner.measurements if m.target == name and m.scenario == "c"
        ]
        lines.append(f"- {name}: {', '.join(rps)}")
    if bad:
        lines += [
            "",
            "**Measurements with errors:** " + ", ".join(f"{m.target}/{m.scenario}" for m in bad),
        ]
    lines += ["", "Notes:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
