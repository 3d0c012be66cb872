"""The report kinds and their column sets: one declared table, the source of the README's
report reference, the CSV headers and the HTML/PDF tables alike."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    activity = "activity"
    model_inventory = "model-inventory"
    source_usage = "source-usage"
    policy_violations = "policy-violations"
    ai_act_log = "ai-act-log"
    integrity = "integrity"
    subject = "subject"
    retention = "retention"


class Format(StrEnum):
    json = "json"
    csv = "csv"
    html = "html"
    pdf = "pdf"


MEDIA_TYPES = {
    Format.json: "application/json",
    Format.csv: "text/csv; charset=utf-8",
    Format.html: "text/html; charset=utf-8",
    Format.pdf: "application/pdf",
}


@dataclass(frozen=True)
class Section:
    """One table of a report: its key, title and columns (key, meaning)."""

    key: str
    title: str
    columns: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


_VOLUME = (
    ("records", "audit records (answers and refused requests)"),
    ("ok", "answered (status ok)"),
    ("blocked", "refused or withheld by a policy (status policy_blocked)"),
    ("errors", "every other status (upstream errors, timeouts, disconnects, ...)"),
    ("avg_latency_ms", "mean gateway latency"),
    ("max_latency_ms", "largest gateway latency"),
    ("prompt_tokens", "input tokens reported by upstreams"),
    ("completion_tokens", "output tokens reported by upstreams"),
    ("total_tokens", "total tokens reported by upstreams"),
)

SECTIONS: dict[Kind, tuple[Section, ...]] = {
    Kind.activity: (
        Section("by_day", "Volume by day (UTC)", (("day", "date (UTC)"), *_VOLUME)),
        Section(
            "by_route",
            "Volume by route and model",
            (
                ("route", "gateway route (the model name clients send)"),
                ("route_kind", "openai, rag, extractive, rag-passthrough"),
                ("model", "model that answered (response model, else upstream model)"),
                *_VOLUME,
            ),
        ),
        Section(
            "by_status",
            "Records by status",
            (("status", "record status"), ("records", "audit records")),
        ),
    ),
    Kind.model_inventory: (
        Section(
            "registered",
            "Registered model versions (MLflow snapshots) that served answers",
            (
                ("name", "registered model name"),
                ("version", "registry version"),
                ("alias", "alias at resolution (e.g. production)"),
                ("run_id", "training run"),
                ("base_model", "base model"),
                ("adapter", "adapter (e.g. LoRA) name"),
                ("datasets", "training datasets (name@digest)"),
                ("validation_status", "validation status tag"),
                ("registry_uri", "tracking URI (without credentials)"),
                ("snapshot_sha256", "hash of the snapshot the records point at"),
                ("first_used_at", "first answer in the period"),
                ("last_used_at", "last answer in the period"),
                ("records", "records pinned to this snapshot"),
                ("answers", "of which answered (status ok)"),
                ("flagged", "records with a flagged policy decision"),
                ("blocked", "records refused or withheld by a policy"),
                ("stale", "served while the registry could not confirm the snapshot"),
            ),
        ),
        Section(
            "unregistered",
            "Models without a registry link",
            (
                ("route", "gateway route"),
                ("upstream_model", "model asked of the upstream"),
                ("response_model", "model the upstream said answered"),
                ("first_used_at", "first use in the period"),
                ("last_used_at", "last use in the period"),
                ("records", "records"),
                ("answers", "of which answered (status ok)"),
            ),
        ),
    ),
    Kind.source_usage: (
        Section(
            "summary",
            "Sourced answers",
            (("measure", "what is counted"), ("value", "count in the period")),
        ),
        Section(
            "documents",
            "Document versions given to answers",
            (
                ("collection", "document collection"),
                ("source_uri", "document source URI"),
                ("title", "title of this version"),
                ("version", "document version"),
                ("content_sha256", "SHA-256 of the version's bytes"),
                ("superseded_at", "when a newer version replaced it (empty: current)"),
                ("retrievals", "times a chunk of it was given to an answer"),
                ("citations", "times an answer cited it"),
                ("answers_citing", "answers citing it"),
                ("given_while_superseded", "times given after it had been superseded"),
            ),
        ),
        Section(
            "superseded",
            "Answers citing a superseded version",
            (
                ("record_id", "audit record"),
                ("created_at", "when the answer was made"),
                ("route", "gateway route"),
                ("title", "document title"),
                ("version", "version cited"),
                ("superseded_at", "when that version was superseded"),
                ("at_answer_time", "already superseded when the answer was made"),
            ),
        ),
        Section(
            "uncited",
            "Sourced answers that cite none of their sources",
            (
                ("record_id", "audit record"),
                ("created_at", "when the answer was made"),
                ("route", "gateway route"),
                ("status", "record status"),
                ("sources", "sources it was given"),
            ),
        ),
    ),
    Kind.policy_violations: (
        Section(
            "by_policy",
            "Violations by policy",
            (
                ("policy_id", "policy"),
                ("stage", "pre (before the upstream) or post (on the answer)"),
                ("outcome", "flagged, blocked or redacted"),
                ("severity", "low, medium, high, critical"),
                ("frameworks", "framework tags (control references)"),
                ("records", "records with this decision"),
            ),
        ),
        Section(
            "by_framework",
            "Violations by framework tag",
            (
                ("framework", "framework tag"),
                ("flagged", "flagged decisions"),
                ("blocked", "blocked decisions"),
                ("redacted", "redacted decisions"),
            ),
        ),
        Section(
            "decisions",
            "Flagged, blocked and redacted answers",
            (
                ("record_id", "audit record"),
                ("created_at", "when"),
                ("route", "gateway route"),
                ("status", "record status"),
                ("policy_id", "policy"),
                ("stage", "stage"),
                ("outcome", "outcome"),
                ("severity", "severity"),
                ("frameworks", "framework tags"),
                ("detail", "what the check found (counts, never the matched values)"),
            ),
        ),
    ),
    Kind.ai_act_log: (
        Section(
            "log",
            "EU AI Act Art. 12 / 26(6) log extract",
            (
                ("record_id", "audit record (UUIDv7)"),
                ("started_at", "start of the use (request received, UTC)"),
                ("ended_at", "end of the use (answer completed, UTC)"),
                ("end_user", "pseudonymous end user sent by the client"),
                ("route", "gateway route"),
                ("input_sha256", "reference to the input: SHA-256 of the prompt as stored"),
                ("reference_database", "collection and document versions the answer was given"),
                ("output_sha256", "SHA-256 of the answer as stored"),
                ("model_version", "model that answered (registry name and version if linked)"),
                ("status", "record status"),
                ("trace_id", "W3C trace id"),
                ("log_index", "position in the tamper-evident log (empty: not sealed yet)"),
            ),
        ),
    ),
    Kind.integrity: (
        Section(
            "checks",
            "Integrity checks",
            (("check", "what was checked"), ("result", "ok or failed"), ("detail", "detail")),
        ),
        Section(
            "checkpoints",
            "Signed checkpoints in the period",
            (
                ("tree_size", "entries the checkpoint signs"),
                ("root_sha256", "Merkle root (hex)"),
                ("key_id", "signing key (RFC 7638 thumbprint)"),
                ("created_at", "when it was signed"),
                ("consistent", "the latest checkpoint extends it (RFC 9162 consistency proof)"),
            ),
        ),
        Section(
            "problems",
            "Records of the tenant that fail verification",
            (("record_id", "audit record"), ("problem", "what is wrong")),
        ),
    ),
    Kind.subject: (
        Section(
            "records",
            "Records of the end user",
            (
                ("record_id", "audit record"),
                ("created_at", "when"),
                ("route", "gateway route"),
                ("model", "model that answered"),
                ("status", "record status"),
                ("prompt", "prompt as stored (empty: erased, expired or hash-only)"),
                ("answer", "answer as stored"),
                ("sources", "document versions given"),
                ("policies", "non-pass policy outcomes"),
                ("retention_class", "retention class"),
                ("retain_until", "content kept until"),
                ("content", "present, or erased"),
            ),
        ),
        Section(
            "events",
            "Holds and erasures concerning the end user",
            (
                ("created_at", "when"),
                ("action", "admin event"),
                ("actor", "who"),
                ("detail", "detail"),
            ),
        ),
    ),
    Kind.retention: (
        Section(
            "classes",
            "Records by retention class",
            (
                ("retention_class", "retention class (empty: none applied)"),
                ("records", "records in the period"),
                ("content_present", "records still holding content"),
                ("content_erased", "records whose content was erased or expired"),
                ("due", "past retain-until with content still present"),
                ("earliest_retain_until", "earliest retain-until"),
                ("latest_retain_until", "latest retain-until"),
            ),
        ),
        Section(
            "holds",
            "Legal holds",
            (
                ("hold_id", "hold"),
                ("scope", "subject, record or route"),
                ("value", "what it covers"),
                ("reason", "why"),
                ("created_at", "placed"),
                ("released_at", "released (empty: active)"),
            ),
        ),
        Section(
            "runs",
            "Retention and erasure runs in the period",
            (
                ("created_at", "when"),
                ("action", "retention.erased or erasure"),
                ("actor", "who"),
                ("records", "records whose content was erased"),
            ),
        ),
    ),
}

TITLES = {
    Kind.activity: "Activity",
    Kind.model_inventory: "Model inventory",
    Kind.source_usage: "Source usage",
    Kind.policy_violations: "Policy violations",
    Kind.ai_act_log: "EU AI Act log extract",
    Kind.integrity: "Integrity attestation",
    Kind.subject: "Data subject access",
    Kind.retention: "Retention",
}

# lists (not aggregates) stop here; the evidence pack carries every record of the period
MAX_LIST_ROWS = 10_000
# the example lists under an aggregate (source-usage's superseded and uncited answers)
MAX_DETAIL_ROWS = 1_000


def section(kind: Kind, key: str) -> Section:
    """The section ``key`` of ``kind``."""
    return next(s for s in SECTIONS[kind] if s.key == key)
