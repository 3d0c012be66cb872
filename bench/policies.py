"""Policy benchmark: what evaluating a bundle costs per answer, and what it costs the proxy.

1. Evaluation: each shipped bundle compiled once, then its ``pre`` and ``post`` stages (and the
   storage redaction its content mode asks for) run over a typical answer on a plain route and
   on a RAG route; microseconds per answer, best of several timeit repeats.
2. Proxy, per store (SQLite, the embedded default, and PostgreSQL, production: the proxy
   benchmark's two stores): ``provenant serve`` (1 worker) started once per bundle (``none``,
   ``default``, ``finance``), each on a fresh store, all against the same demo upstream,
   measured with wrk at 64 connections in interleaved rounds of short slices, the order
   reversed every other round. The slices are
   short because this VM's speed is not steady: the same pure-Python loop, timed back to back
   on an idle machine, takes 12 ms for a while and then 21 ms for stretches of seconds (the
   host's load, which no process here sees). A 10 s measurement falls into one such stretch
   or another, and a round of 10 s measurements compared targets measured at different
   speeds (rounds' ratios of 0.51-1.01 for one build); 3 s slices in 12 rounds put every
   target into every stretch alike. Each round gives a bundle's ratio to ``none`` measured
   beside it; the verdict uses the median of those paired ratios; the pooled ratio (all
   requests over all measured seconds) and the paired ratios' quartiles are shown too.
   Target (issue: governance policies): finance >= 0.8x.

With ``--baseline REV``, ``none`` and ``finance`` are also served by that git revision's code
(its ``service``, migrations and bundle files, in this virtualenv) in the same rounds, labelled
``none@REV`` and ``finance@REV``, each ratio against its own code's ``none``: a change's effect
on the ratio, measured side by side.

Usage: ``.venv/bin/python bench/policies.py [--stores sqlite,postgres] [--rounds 12]
[--baseline REV] [--no-write]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import timeit
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (  # bench/ is not a package: proxy.py is beside this file
    MODEL_FAST,
    RESULTS,
    ROOT,
    WORK,
    Processes,
    Runner,
    extract_revision,
    git_revision,
    load_average,
    log,
    reset_postgres,
    start_demo_upstream,
    start_provenant,
)

from service.lineage.records import redact_json
from service.policies.bundle import load_bundle
from service.policies.checks import Facts, Source
from service.policies.engine import Engine

BUNDLES = ("default", "finance", "healthcare", "eu-ai-act")
BUNDLES_MEASURED = ("none", "default", "finance")
BASELINE_MEASURED = ("none", "finance")  # with --baseline REV
TARGET_RATIO = 0.8

PROMPT = [
    "You are the support assistant of a retail bank. Answer briefly and cite your sources.",
    "I ordered a replacement card on 2026-11-02 (order 48213) and it has not arrived yet. "
    "What is the usual delivery time, and can I keep using my old card until then?",
]
ANSWER = (
    "Replacement cards usually arrive within 5 to 7 business days [1]. Your old card stays "
    "active until you activate the new one [2]. If it has not arrived after 10 business days, "
    "call the card services line and a new card will be sent at no cost [1]."
)
SOURCES = [
    Source(
        "Replacement cards are delivered within 5 to 7 business days. If a card has not arrived "
        "after 10 business days, card services send a new card at no cost.",
        cited=True,
    ),
    Source("The previous card remains active until the replacement is activated.", cited=True),
    Source("Lost cards must be reported immediately through the app or by phone."),
]


def answer_once(engine: Engine, facts: Facts) -> int:
    """One answer's policy work: storage mode, pre, post, and the content mode's redaction."""
    facts = replace(facts, memo={})  # a fresh answer
    storage = engine.storage(facts.route, facts.route_kind, facts.tenant, facts.memo)
    pre = engine.pre(facts)
    post = engine.post(facts.answered(ANSWER))
    if storage.redact is not None:
        redact_json([{"role": "user", "content": t} for t in PROMPT], storage.redact)
        redact_json([{"message": {"role": "assistant", "content": ANSWER}}], storage.redact)
        storage.redact(ANSWER)
    return len(pre.decisions) + len(post.decisions)


def evaluation_costs(repeat: int) -> list[tuple[str, str, float, int]]:
    """(bundle, route kind, microseconds per answer, decisions per answer)."""
    rows = []
    for name in BUNDLES:
        engine = Engine(load_bundle(ROOT / "policies" / f"{name}.yaml"))
        for kind, sources in (("openai", ()), ("rag", SOURCES)):
            facts = Facts("r", kind, "bench", PROMPT, None, sources)
            count = answer_once(engine, facts)
            number = 2000
            best = (
                min(
                    timeit.repeat(
                        lambda e=engine, f=facts: answer_once(e, f), number=number, repeat=repeat
                    )
                )
                / number
            )
            rows.append((name, kind, best * 1e6, count))
            log(f"  {name:11s} {kind:7s} {best * 1e6:7.1f} us/answer  {count} decisions")
    return rows


def pooled(slices: list[tuple[int, float]]) -> float:
    """Requests per second over all slices together."""
    return sum(r for r, _ in slices) / sum(t for _, t in slices)


def measure_store(
    args: argparse.Namespace, runner: Runner, procs: Processes, tmp: Path, upstream: str, store: str
) -> list[str]:
    """The proxy on one store (``sqlite``, or ``postgres``: a fresh database per bundle) with
    each bundle, in interleaved rounds of slices; the table rows of its report."""
    rps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    served: dict[str, list[tuple[int, float]]] = {}  # (requests, seconds) of each slice
    targets = {}
    # (label, bundle, code): this checkout's bundles, and with --baseline the same bundles
    # served by that revision's code (and its own bundle files), labelled bundle@revision
    runs = [(b, b, None) for b in BUNDLES_MEASURED]
    if args.baseline_code is not None:
        runs += [(f"{b}@{args.baseline}", b, args.baseline_code) for b in BASELINE_MEASURED]
    for label, bundle, code in runs:
        home = ROOT if code is None else code
        path = "none" if bundle == "none" else str(home / "policies" / f"{bundle}.yaml")
        name = label.replace("@", "-at-")
        if store == "sqlite":
            url = f"sqlite:///{tmp / name}-{store}.db"
        else:
            dbname = f"provenant_bench_policies_{name.replace('-', '_')}"
            reset_postgres(args.pg_admin_url, dbname)
            url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{dbname}"
        targets[label] = start_provenant(
            procs,
            f"policies-{store}-{name}",
            url,
            tmp,
            upstream,
            60,
            extra_env={"PROVENANT_POLICY_BUNDLE": path},
            code=code,
        )
    for round_ in range(args.rounds):
        log(f"{store}: round {round_ + 1}/{args.rounds}")
        order = list(targets.items())
        if round_ % 2:
            order.reverse()
        for label, t in order:
            assert t.proc is not None
            m = runner.measure(t.name, "c", t.url, MODEL_FAST, t.key, args.connections, t.proc.pid)
            if not m.ok:
                raise RuntimeError(f"{t.name}: errors={m.errors} non2xx={m.non2xx}")
            rps.setdefault(label, []).append(m.rps)
            served.setdefault(label, []).append((m.requests, m.duration_s))
            if m.cpu_us_per_req is not None:
                cpu.setdefault(label, []).append(m.cpu_us_per_req)
    for t in targets.values():  # the next store's targets get the machine to themselves
        assert t.proc is not None
        procs.stop(t.proc)

    lines = []
    rounds = []
    for label in rps:
        bundle, _, revision = label.partition("@")
        none = "none" + (f"@{revision}" if revision else "")  # each code against its own none
        med = statistics.median(rps[label])
        paired = [r / n for r, n in zip(rps[label], rps[none], strict=True)]
        ratio = statistics.median(paired)
        q1, _, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else (ratio,) * 3
        cpu_med = statistics.median(cpu[label]) if cpu.get(label) else float("nan")
        verdict = ""
        if label == "finance":
            verdict = f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'} (>= {TARGET_RATIO}x)"
        lines.append(
            f"| {store} | {label} | {med:.0f} | {ratio:.3f}x | {q1:.2f}-{q3:.2f} "
            f"| {pooled(served[label]) / pooled(served[none]):.3f}x "
            f"| {med / statistics.median(rps[none]):.3f}x | {cpu_med:.0f} | {verdict} |"
        )
        if bundle != "none":
            rounds.append(f"{label} {', '.join(f'{r:.2f}' for r in paired)}")
    return [*lines, f"<!-- {store} rounds' ratios: {'; '.join(rounds)} -->"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk slice (whole)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up per slice")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds per target")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--stores",
        default="sqlite,postgres",
        help="comma-separated: sqlite (the embedded default), postgres (production)",
    )
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL URL allowed to drop and create the run's databases",
    )
    p.add_argument(
        "--baseline",
        help="also serve none and finance with this git revision's code (beside this checkout's, "
        "in the same rounds); it runs in this virtualenv",
    )
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "bench/policies.py", *sys.argv[1:]])
    wrk = shutil.which("wrk")
    if wrk is None:
        log("wrk not found: install it (Debian: apt-get install -y wrk)")
        return 2
    load_before = load_average()

    log("evaluation cost per answer (pre + post + storage redaction)")
    costs = evaluation_costs(repeat=5)

    WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="policies-", dir=WORK))
    args.baseline_code = None
    if args.baseline:
        args.baseline_code = extract_revision(args.baseline, tmp / "baseline")
    procs = Processes(tmp, None)
    runner = Runner(wrk, None, args.duration, args.warmup, tmp, tmp / "wrk-raw.txt")
    rows: list[str] = []
    try:
        upstream = start_demo_upstream(procs)
        for store in args.stores.split(","):
            rows += measure_store(args, runner, procs, tmp, upstream, store)
    finally:
        procs.stop_all()

    lines = [
        "",
        f"## Policies — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{command}`  ",
        f"Revision: {git_revision()}; load before: {load_before}; "
        f"{os.cpu_count()} CPUs shared with whatever else runs.",
        "",
        "Evaluation per answer (compiled bundle; `pre` + `post` + the content mode's redaction of "
        "prompt and answer), best of 5 x 2,000:",
        "",
        "| bundle | route kind | us / answer | decisions |",
        "|---|---|---:|---:|",
        *[f"| {b} | {k} | {us:.1f} | {n} |" for b, k, us, n in costs],
        "",
        f"Proxy, 1 worker, wrk c={args.connections}, {args.rounds} interleaved rounds of "
        f"{args.duration:g} s slices after {args.warmup:g} s of warm-up each, per store (a "
        "round's ratio is the bundle's req/s over `none`'s in that round; pooled: all requests "
        "over all measured seconds):",
        "",
        "| store | bundle | req/s (median) | ratio to none (median of rounds) | quartiles of "
        "rounds' ratios | pooled ratio | ratio of medians | server CPU us/req | target |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
        *(r for r in rows if r.startswith("|")),
        "",
        *(r.removeprefix("<!-- ").removesuffix(" -->") + "  " for r in rows if r.startswith("<")),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        with RESULTS.open("a") as f:
            f.write(report)
        log(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
