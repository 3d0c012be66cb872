"""Who may call what: one declared table, checked on every request.

An endpoint missing from ``ACCESS`` is refused for everyone, so a route added without a rule
cannot leak (the route x role test walks the OpenAPI schema against this table).
"""

from __future__ import annotations

from typing import Final

from service.tenancy.models import Role

PUBLIC: Final = frozenset[Role]()
# every role that acts on a tenant's behalf: a `metrics` key is a scraper's and reads nothing else
ANY_ROLE: Final = frozenset({Role.app, Role.auditor, Role.admin})
READERS: Final = frozenset({Role.auditor, Role.admin})
ADMIN: Final = frozenset({Role.admin})
# GET /metrics: cluster-wide counts (no tenant labels, no content), still not public — they show
# traffic volumes, routes and upstream health; a dedicated key keeps Prometheus least-privileged
SCRAPERS: Final = frozenset({Role.metrics})

ACCESS: Final[dict[tuple[str, str], frozenset[Role]]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("POST", "/v1/chat/completions"): frozenset({Role.app}),
    ("GET", "/v1/models"): ANY_ROLE,
    ("GET", "/v1/audit/records"): READERS,
    ("GET", "/v1/audit/records/{record_id}"): ANY_ROLE,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/v1/audit/checkpoints/latest"): ANY_ROLE,
    ("GET", "/v1/audit/checkpoints/{size}"): ANY_ROLE,
    ("GET", "/v1/audit/records/{record_id}/proof"): ANY_ROLE,
    ("GET", "/v1/audit/consistency"): ANY_ROLE,
    ("GET", "/v1/policies"): READERS,
    ("POST", "/v1/admin/policies/reload"): ADMIN,
    ("POST", "/v1/admin/holds"): ADMIN,
    ("GET", "/v1/admin/holds"): READERS,
    ("POST", "/v1/admin/holds/{hold_id}/release"): ADMIN,
    ("POST", "/v1/admin/erasure"): ADMIN,
    ("POST", "/v1/admin/retention/run"): ADMIN,
    ("GET", "/metrics"): SCRAPERS,
    ("GET", "/v1/lineage/models"): READERS,
    ("GET", "/v1/lineage/models/{snapshot_id}"): READERS,
    ("GET", "/v1/lineage/models/{snapshot_id}/answers"): READERS,
    # document registry: platform engineers ingest; anyone in the tenant may resolve sources
    ("POST", "/v1/documents"): frozenset({Role.admin}),
    ("GET", "/v1/documents"): ANY_ROLE,
    ("GET", "/v1/documents/{document_id}/versions"): ANY_ROLE,
    ("GET", "/v1/chunks/{chunk_id}"): ANY_ROLE,
    # compliance reports and evidence packs: the tenant's auditors (and admins)
    ("GET", "/v1/reports/{kind}"): READERS,
    ("GET", "/v1/evidence"): READERS,
    # the auditor web UI (signed session cookie instead of a bearer key; same roles, same tenant)
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/login"): PUBLIC,
    ("POST", "/ui/login"): PUBLIC,
    ("POST", "/ui/logout"): READERS,
    ("GET", "/ui/answers"): READERS,
    ("GET", "/ui/answers/{record_id}"): READERS,
    ("GET", "/ui/documents"): READERS,
    ("GET", "/ui/documents/{document_id}"): READERS,
    ("GET", "/ui/reports"): READERS,
    ("GET", "/ui/reports/{kind}"): READERS,
    ("GET", "/ui/evidence"): READERS,
    ("GET", "/ui/integrity"): READERS,
}


def allowed_roles(method: str, path: str) -> frozenset[Role] | None:
    """Roles allowed on an endpoint (empty = public), or None when no rule is declared."""
    return ACCESS.get((method, path))
