"""``GET /metrics``: Prometheus exposition, for keys with the ``metrics`` role."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import MetricsDep
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["telemetry"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request, principal: CurrentPrincipal, metrics: MetricsDep) -> Response:
    """Prometheus metrics of this gateway (text format, or OpenMetrics if asked for)."""
    body, content_type = metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
