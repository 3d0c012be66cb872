"""Build each report kind's tables from the SQL aggregates (``queries``): the database groups,
Python only sums the few groups a query returns and shapes rows for the renderers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.orm import Session

from service.provenance.snapshots import model_view
from service.reports import queries
from service.reports.kinds import MAX_DETAIL_ROWS, MAX_LIST_ROWS, Kind, section
from service.reports.model import Bar, Chart, Table
from service.reports.queries import Scope

_SUMS = ("records", "ok", "blocked", "errors", "prompt_tokens", "completion_tokens")


def _rollup(groups: Iterable[Any], key: Any) -> list[dict[str, Any]]:
    """Sum the activity groups by ``key(group)``."""
    acc: dict[Any, dict[str, Any]] = {}
    for g in groups:
        k = key(g)
        row = acc.setdefault(
            k,
            {
                **dict(zip(_key_names(k), k, strict=True)),
                **{s: 0 for s in _SUMS},
                "total_tokens": 0,
                "_latency": 0.0,
                "max_latency_ms": 0.0,
            },
        )
        n = int(g["records"])
        row["records"] += n
        if g["status"] == "ok":
            row["ok"] += n
        elif g["status"] == "policy_blocked":
            row["blocked"] += n
        else:
            row["errors"] += n
        row["_latency"] += float(g["latency_sum"] or 0)
        row["max_latency_ms"] = max(row["max_latency_ms"], float(g["latency_max"] or 0))
        for t in ("prompt_tokens", "completion_tokens", "total_tokens"):
            row[t] += int(g[t] or 0)
    out = []
    for k in sorted(acc):
        row = acc[k]
        row["avg_latency_ms"] = round(row.pop("_latency") / row["records"], 3)
        row["max_latency_ms"] = round(row["max_latency_ms"], 3)
        out.append(row)
    return out


def _key_names(k: tuple[Any, ...]) -> tuple[str, ...]:
    return ("day",) if len(k) == 1 else ("route", "route_kind", "model")


def activity(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Volume, status, latency and tokens by day, by route and model, by status."""
    groups = queries.activity(session, scope)
    by_day = _rollup(groups, lambda g: (g["day"],))
    by_route = _rollup(groups, lambda g: (g["route"], g["route_kind"], g["model"]))
    statuses: dict[str, int] = defaultdict(int)
    for g in groups:
        statuses[g["status"]] += int(g["records"])
    by_status = [{"status": s, "records": n} for s, n in sorted(statuses.items())]
    tables = [
        Table(section(Kind.activity, "by_day"), by_day),
        Table(section(Kind.activity, "by_route"), by_route),
        Table(section(Kind.activity, "by_status"), by_status),
    ]
    charts = [
        Chart(
            "Records per day",
            ("ok", "blocked", "errors"),
            tuple(Bar(r["day"], {s: r[s] for s in ("ok", "blocked", "errors")}) for r in by_day),
        ),
        Chart(
            "Tokens per route",
            ("prompt_tokens", "completion_tokens"),
            tuple(
                Bar(
                    f"{r['route']} ({r['model'] or '-'})",
                    {
                        "prompt_tokens": r["prompt_tokens"],
                        "completion_tokens": r["completion_tokens"],
                    },
                )
                for r in by_route
            ),
        ),
    ]
    return tables, charts


def model_inventory(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Every model snapshot that served the scope's records, and models without a registry."""
    registered = []
    for r in queries.registered_models(session, scope):
        snap = r["ModelSnapshot"]
        view = model_view(snap.id, snap.snapshot_sha256, snap.content)
        registered.append(
            {
                "name": snap.name,
                "version": snap.version,
                "alias": snap.alias,
                "run_id": snap.run_id,
                "base_model": view.get("base_model"),
                "adapter": view.get("adapter"),
                "datasets": ", ".join(
                    f"{d.get('name')}@{(d.get('digest') or '')[:12]}"
                    for d in view.get("datasets") or []
                ),
                "validation_status": view.get("validation_status"),
                "registry_uri": snap.registry_uri,
                "snapshot_sha256": snap.snapshot_sha256,
                **{
                    k: r[k]
                    for k in (
                        "first_used_at",
                        "last_used_at",
                        "records",
                        "answers",
                        "flagged",
                        "blocked",
                        "stale",
                    )
                },
            }
        )
    plain = [dict(r) for r in queries.unregistered_models(session, scope)]
    tables = [
        Table(section(Kind.model_inventory, "registered"), registered),
        Table(section(Kind.model_inventory, "unregistered"), plain),
    ]
    chart = Chart(
        "Answers per model",
        ("answers",),
        tuple(Bar(f"{r['name']} v{r['version']}", {"answers": r["answers"]}) for r in registered)
        + tuple(
            Bar(r["response_model"] or r["upstream_model"] or r["route"], {"answers": r["answers"]})
            for r in plain
        ),
    )
    return tables, [chart]


def _capped(rows: list[Any], what: str, cap: int = MAX_LIST_ROWS) -> str | None:
    if len(rows) < cap:
        return None
    return (
        f"first {cap:,} {what} shown (the counts above cover all; the ai-act-log report and "
        "the evidence pack list every record)"
    )


def source_usage(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Document versions cited, answers citing superseded versions, uncited sourced answers."""
    versions = [dict(r) for r in queries.version_usage(session, scope)]
    for v in versions:
        v.pop("version_id", None)
    superseded = [dict(r) for r in queries.superseded_citations(session, scope, MAX_DETAIL_ROWS)]
    uncited = [dict(r) for r in queries.uncited_answers(session, scope, MAX_DETAIL_ROWS)]
    s = queries.sourced_summary(session, scope)
    summary = [
        {"measure": "sourced records (rag, extractive, rag-passthrough)", "value": s[0]},
        {"measure": "sourced answers (status ok)", "value": s[1] or 0},
        {"measure": "answers given no source", "value": s[2] or 0},
        {"measure": "answers citing none of their sources", "value": s[3] or 0},
        {"measure": "records with an unverified source", "value": s[4] or 0},
        {"measure": "answers citing a version superseded at answer time", "value": s[5] or 0},
        {"measure": "answers citing a version superseded since", "value": s[6] or 0},
    ]
    tables = [
        Table(section(Kind.source_usage, "summary"), summary),
        Table(section(Kind.source_usage, "documents"), versions),
        Table(
            section(Kind.source_usage, "superseded"),
            superseded,
            _capped(superseded, "citations", MAX_DETAIL_ROWS),
        ),
        Table(
            section(Kind.source_usage, "uncited"),
            uncited,
            _capped(uncited, "answers", MAX_DETAIL_ROWS),
        ),
    ]
    chart = Chart(
        "Citations per document version",
        ("citations", "uncited_retrievals"),
        tuple(
            Bar(
                f"{v['title']} v{v['version']}",
                {
                    "citations": v["citations"],
                    "uncited_retrievals": v["retrievals"] - v["citations"],
                },
            )
            for v in versions
        ),
    )
    return tables, [chart]


def _frameworks(value: Any) -> list[str]:
    if isinstance(value, str):  # SQLite hands back a JSON column's text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    return [str(v) for v in value] if isinstance(value, list) else []


def policy_violations(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Flagged, blocked and redacted decisions, by policy, by framework tag, one by one."""
    by_policy = []
    frameworks: dict[str, dict[str, Any]] = {}
    for r in queries.violations_by_policy(session, scope):
        tags = _frameworks(r["frameworks"])
        by_policy.append({**dict(r), "frameworks": ", ".join(tags)})
        for tag in tags or ["(untagged)"]:
            row = frameworks.setdefault(
                tag, {"framework": tag, "flagged": 0, "blocked": 0, "redacted": 0}
            )
            row[r["outcome"]] += int(r["records"])
    decisions = []
    for r in queries.violation_list(session, scope, MAX_LIST_ROWS):
        detail = dict(r["detail"] or {})
        severity = detail.pop("severity", None)
        tags = detail.pop("frameworks", [])
        decisions.append(
            {
                **{k: r[k] for k in ("record_id", "created_at", "route", "status")},
                **{k: r[k] for k in ("policy_id", "stage", "outcome")},
                "severity": severity,
                "frameworks": ", ".join(_frameworks(tags)),
                "detail": orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()
                if detail
                else "",
            }
        )
    tables = [
        Table(section(Kind.policy_violations, "by_policy"), by_policy),
        Table(
            section(Kind.policy_violations, "by_framework"),
            [frameworks[k] for k in sorted(frameworks)],
        ),
        Table(
            section(Kind.policy_violations, "decisions"), decisions, _capped(decisions, "decisions")
        ),
    ]
    totals: dict[str, dict[str, float]] = {}
    for r in by_policy:
        totals.setdefault(r["policy_id"], {o: 0 for o in queries.VIOLATIONS})[r["outcome"]] += r[
            "records"
        ]
    chart = Chart(
        "Violations per policy",
        queries.VIOLATIONS,
        tuple(Bar(p, v) for p, v in sorted(totals.items())),
    )
    return tables, [chart]


def source_label(s: Any) -> str:
    """``collection: title vN p.P`` (or what an external app reported)."""
    if s["version"] is None:
        return f"unverified: {s['source_ref'] or '?'}"
    page = f" p.{s['page']}" if s["page"] is not None else ""
    return f"{s['collection']}: {s['title']} v{s['version']}{page}"


def model_label(r: Any) -> str:
    rec = r["AuditRecord"]
    model = rec.response_model or rec.upstream_model or rec.requested_model
    if r["model_name"] is not None:
        return f"{r['model_name']} v{r['model_version']} ({model})"
    return str(model)


def ai_act_log(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Art. 12 / 26(6): each use with its period, input and output references, the reference
    database (collection and document versions), the model version and trace id."""
    page = queries.record_page(session, scope, MAX_LIST_ROWS)
    sources = queries.sources_of(session, [r["AuditRecord"].id for r in page])
    rows = []
    for r in page:
        rec = r["AuditRecord"]
        refs = sorted(
            {
                f"{s['collection']}: {s['source_uri']} v{s['version']}"
                for s in sources.get(rec.id, [])
                if s["version"] is not None
            }
        )
        rows.append(
            {
                "record_id": rec.id,
                "started_at": rec.created_at,
                "ended_at": rec.completed_at,
                "end_user": rec.end_user,
                "route": rec.route,
                "input_sha256": rec.prompt_sha256 or rec.prompt_salted_sha256,
                "reference_database": "; ".join(refs),
                "output_sha256": rec.answer_sha256 or rec.answer_salted_sha256,
                "model_version": model_label(r),
                "status": rec.status,
                "trace_id": rec.trace_id,
                "log_index": r["log_index"],
            }
        )
    return [Table(section(Kind.ai_act_log, "log"), rows, _capped(rows, "records"))], []


def subject(session: Session, scope: Scope) -> tuple[list[Table], list[Chart]]:
    """Everything stored about one end user in the period (an access request)."""
    page = queries.record_page(session, scope, MAX_LIST_ROWS)
    ids = [r["AuditRecord"].id for r in page]
    sources = queries.sources_of(session, ids)
    decisions = queries.decisions_of(session, ids)
    rows = []
    for r in page:
        rec = r["AuditRecord"]
        rows.append(
            {
                "record_id": rec.id,
                "created_at": rec.created_at,
                "route": rec.route,
                "model": model_label(r),
                "status": rec.status,
                "prompt": rec.prompt,
                "answer": rec.answer,
                "sources": "; ".join(source_label(s) for s in sources.get(rec.id, [])),
                "policies": "; ".join(
                    f"{d.policy_id}: {d.outcome}" for d in decisions.get(rec.id, [])
                ),
                "retention_class": rec.retention_class,
                "retain_until": rec.retain_until,
                "content": "present" if rec.content_salt is not None else "erased",
            }
        )
    events = []
    for e in queries.subject_events(session, scope, MAX_LIST_ROWS):
        detail = e.detail or {}
        shown = {k: v for k, v in detail.items() if k != "records"}
        if "records" in detail:
            shown["records"] = len(detail["records"])
        events.append(
            {
                "created_at": e.created_at,
                "action": e.action,
                "actor": e.actor,
                "detail": orjson.dumps(shown, option=orjson.OPT_SORT_KEYS).decode(),
            }
        )
    return [
        Table(section(Kind.subject, "records"), rows, _capped(rows, "records")),
        Table(section(Kind.subject, "events"), events),
    ], []


def retention(session: Session, scope: Scope, now: datetime) -> tuple[list[Table], list[Chart]]:
    """Retention classes with erased and due counts, legal holds, retention and erasure runs."""
    classes = [dict(r) for r in queries.retention_classes(session, scope, now)]
    holds = [
        {
            "hold_id": h.id,
            "scope": h.scope,
            "value": h.subject or h.route or (str(h.record_id) if h.record_id else None),
            "reason": h.reason,
            "created_at": h.created_at,
            "released_at": h.released_at,
        }
        for h in queries.holds(session, scope, MAX_LIST_ROWS)
    ]
    runs = [
        {
            "created_at": e.created_at,
            "action": e.action,
            "actor": e.actor,
            "records": len((e.detail or {}).get("records") or []),
        }
        for e in queries.events(session, scope, ("retention.erased", "erasure"), MAX_LIST_ROWS)
    ]
    chart = Chart(
        "Content by retention class",
        ("content_present", "content_erased"),
        tuple(
            Bar(
                c["retention_class"] or "(none)",
                {"content_present": c["content_present"], "content_erased": c["content_erased"]},
            )
            for c in classes
        ),
    )
    return [
        Table(section(Kind.retention, "classes"), classes),
        Table(section(Kind.retention, "holds"), holds),
        Table(section(Kind.retention, "runs"), runs),
    ], [chart]
