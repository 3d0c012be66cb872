"""Reports and evidence packs over HTTP, for auditors: ``/v1/reports/{kind}``, ``/v1/evidence``."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.deps import SessionDep, SettingsDep
from service.reports import evidence, render
from service.reports import service as reports
from service.reports.kinds import Format, Kind
from service.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["reports"])

From = Annotated[
    datetime, Query(alias="from", description="period start (ISO 8601; UTC if no zone)")
]
To = Annotated[datetime, Query(alias="to", description="period end, exclusive")]
Route = Annotated[str | None, Query(max_length=200, description="only this route's records")]

_FILES = {
    "application/zip": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
}


@router.get(
    "/v1/reports/{kind}",
    response_class=Response,
    responses={
        200: {
            "description": "the report in the requested format",
            "content": {
                "application/json": {},
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
def report(
    kind: Kind,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    start: From,
    end: To,
    fmt: Annotated[Format, Query(alias="format")] = Format.json,
    route: Route = None,
    subject: Annotated[
        str | None, Query(max_length=256, description="end user id (required for `subject`)")
    ] = None,
) -> Response:
    """A compliance report of the caller's tenant for a period; the export is an admin event."""
    request = reports.Request(
        kind,
        principal.tenant_id,
        principal.tenant,
        reports.utc(start),
        reports.utc(end),
        route,
        subject,
    )
    out = reports.export(
        session,
        request=request,
        fmt=fmt,
        actor=f"key:{principal.key_prefix}",
        origin=settings.log_origin,
    )
    disposition = "inline" if fmt in (Format.json, Format.html) else "attachment"
    return Response(
        out.content,
        media_type=out.media_type,
        headers={
            "Content-Disposition": render.disposition(out.filename, disposition),
            "X-Provenant-Report-SHA256": out.sha256,
        },
    )


@router.get(
    "/v1/evidence",
    response_class=Response,
    responses={
        200: {"description": "the evidence pack (ZIP)", "content": _FILES["application/zip"]}
    },
)
def evidence_pack(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    start: From,
    end: To,
    route: Route = None,
) -> Response:
    """The tenant's records and events of a period with their inclusion proofs, the signed
    checkpoint, the public keys, the reports and a README: ``provenant verify --pack`` checks
    it offline. The export is an admin event."""
    buffer = io.BytesIO()
    evidence.write_pack(
        session,
        buffer,
        tenant_id=principal.tenant_id,
        tenant=principal.tenant,
        start=reports.utc(start),
        end=reports.utc(end),
        actor=f"key:{principal.key_prefix}",
        origin=settings.log_origin,
        route=route,
        max_records=settings.evidence_max_records,
    )
    name = f"provenant-evidence-{principal.tenant}-{start:%Y%m%d}-{end:%Y%m%d}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": render.disposition(name)},
    )
