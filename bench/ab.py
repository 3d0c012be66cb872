"""Interleaved A/B of this checkout against a git revision: throughput at 64 connections.

Both gateways run side by side against one demo upstream, each on its own fresh store (PostgreSQL
by default, or SQLite), and wrk measures them in alternating order for ``--rounds`` rounds, so
drift on a shared machine hits both alike. The revision runs from ``git archive`` (its
``service``, ``migrations`` and ``policies``) exactly as ``bench/proxy.py --baseline`` runs it.
An A/A run (``--rev HEAD``) shows the harness's own noise.

Usage: ``.venv/bin/python bench/ab.py --rev cc6c642 [--rounds 4 --duration 10 --sqlite
--bundle finance]``.
Prints the medians; nothing is written.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (  # bench/ is not a package: proxy.py is beside this file
    MODEL_FAST,
    ROOT,
    WORK,
    Processes,
    Runner,
    extract_revision,
    log,
    reset_postgres,
    start_demo_upstream,
    start_provenant,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", required=True, help="the git revision to compare this checkout with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--sqlite", action="store_true", help="SQLite stores instead of PostgreSQL")
    p.add_argument(
        "--bundle",
        help="policy bundle both run (a name in each side's policies/, or 'none'); default: "
        "the gateway's default",
    )
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        log("wrk not found: install it (Debian: apt-get install -y wrk)")
        return 2
    WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ab-", dir=WORK))
    procs = Processes(tmp, None)
    results: dict[str, list[tuple[float, float, float]]] = {"checkout": [], args.rev: []}
    try:
        upstream = start_demo_upstream(procs)
        code = extract_revision(args.rev, tmp / "code")
        targets = {}
        for i, name in enumerate(results):
            if args.sqlite:
                url = f"sqlite:///{tmp}/ab{i}.db"
            else:
                reset_postgres(args.pg_admin_url, f"provenant_ab{i}")
                url = args.pg_admin_url.rsplit("/", 1)[0] + f"/provenant_ab{i}"
            env = {}
            if args.bundle:
                root = code if i else ROOT
                env["PROVENANT_POLICY_BUNDLE"] = (
                    "none"
                    if args.bundle == "none"
                    else str(root / "policies" / f"{args.bundle}.yaml")
                )
            targets[name] = start_provenant(
                procs, f"ab{i}", url, tmp, upstream, 60, extra_env=env, code=code if i else None
            )
        runner = Runner(wrk, None, args.duration, 2, tmp, tmp / "wrk-raw.txt")
        names = list(results)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t = targets[name]
                assert t.proc is not None
                m = runner.measure(
                    name, "c", t.url, MODEL_FAST, t.key, args.connections, t.proc.pid
                )
                results[name].append((m.rps, m.cpu_us_per_req or float("nan"), m.p50_ms))
    finally:
        procs.stop_all()
    for name, runs in results.items():
        rps = statistics.median(r for r, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        rounds = ", ".join(f"{r:.0f}" for r, _, _ in runs)
        p50 = statistics.median(p for _, _, p in runs)
        log(
            f"{name}: median {rps:.0f} req/s, {cpu:.0f} us CPU/req, p50 {p50:.3f} ms "
            f"(rounds: {rounds})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
