"""The auditor web UI at ``/ui``: server-rendered pages (Jinja2, autoescaped), no script.

Sign-in takes an auditor (or admin) key once and sets a signed session cookie
(``ui.sessions``); every page then resolves the key again and checks the access table, so the
UI sees exactly what the same key sees over the API: its own tenant, nothing else.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.deps import SessionDep, SettingsDep
from service.errors import Forbidden, InvalidRequest, ProvenantError, Unauthenticated
from service.lineage.events import record_event
from service.reports import evidence, render
from service.reports import service as reports
from service.reports.kinds import SECTIONS, TITLES, Format, Kind
from service.reports.render import _cell
from service.tenancy.access import allowed_roles
from service.tenancy.auth import KeyResolver, Principal
from service.ui import pages
from service.ui.sessions import COOKIE, LOGIN_COOKIE, SessionSigner

router = APIRouter(prefix="/ui", include_in_schema=False)
_HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    """The page templates (autoescaped: everything a record holds is untrusted text)."""
    t = Jinja2Templates(directory=_HERE / "templates")
    t.env.filters["cell"] = _cell
    t.env.globals["version"] = __version__
    return t


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in form."""


def mount(app: FastAPI) -> None:
    """Add the UI's routes, its static files and the sign-in redirect to ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")

    async def to_sign_in(_: Request, __: Exception) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    app.add_exception_handler(SignInRequired, to_sign_in)


async def _ui_principal(request: Request) -> tuple[Principal, str]:
    """The signed-in principal and the session's CSRF token; a page its role may not see is
    403, no session is a redirect to sign-in."""
    signer: SessionSigner = request.app.state.ui_sessions
    session = signer.check(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    resolver: KeyResolver = request.app.state.keys
    principal = await resolver.by_prefix(session.key_prefix)
    if principal is None:
        raise SignInRequired
    route = request.scope.get("route")
    roles = allowed_roles(request.method, getattr(route, "path", request.url.path))
    if roles is None or principal.role not in roles:
        raise Forbidden(f"role '{principal.role}' may not use the auditor UI")
    resolver.limiter.take(principal.key_id)
    return principal, session.csrf


UiPrincipal = Annotated[tuple[Principal, str], Depends(_ui_principal)]


def _render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    return templates().TemplateResponse(request, name, ctx, status_code=status)


def _page(request: Request, who: tuple[Principal, str], name: str, build: Any) -> Response:
    """Render a page from ``build()``; a domain error becomes an error page with its status."""
    principal, csrf = who
    base = {"principal": principal, "csrf": csrf}
    try:
        ctx = build()
    except ProvenantError as exc:
        return _render(request, "error.html", {**base, "error": exc}, exc.status)
    return _render(request, name, {**base, **ctx})


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Forbidden("cross-origin form submission refused")


def _when(value: str | None, default: datetime | None = None) -> datetime | None:
    """A date or timestamp from a form field (UTC if no zone); blank → ``default``."""
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"not a date: {value[:40]!r}") from exc
    return reports.utc(parsed)


def _cookie(response: Response, signer: SessionSigner, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name, value, max_age=age, path="/ui", httponly=True, samesite="strict", secure=signer.secure
    )


@router.get("")
def home() -> Response:
    return RedirectResponse("/ui/answers", status_code=303)


@router.get("/login")
def login_form(request: Request) -> Response:
    signer: SessionSigner = request.app.state.ui_sessions
    value, token = signer.login_token()
    response = _render(request, "login.html", {"token": token, "error": None})
    _cookie(response, signer, LOGIN_COOKIE, value, 1800)
    return response


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=200)],
    token: Annotated[str, Form(max_length=100)],
) -> Response:
    """Sign in with an auditor key: the key is checked once and never stored in the cookie."""
    signer: SessionSigner = request.app.state.ui_sessions
    resolver: KeyResolver = request.app.state.keys
    error: str | None = None
    status = 200
    try:
        _same_origin(request)
        if not signer.check_login(request.cookies.get(LOGIN_COOKIE), token):
            raise Forbidden("the sign-in form expired; please try again")
        principal = await resolver.resolve(key.strip())
        resolver.limiter.take(principal.key_id)
        roles = allowed_roles("GET", "/ui/answers") or frozenset()
        if principal.role not in roles:
            raise Forbidden(
                f"a {principal.role} key cannot sign in here; use an auditor key of your tenant"
            )
    except (Unauthenticated, Forbidden) as exc:
        error, status = exc.message, exc.status
    if error is not None:
        value, new_token = signer.login_token()
        response = _render(request, "login.html", {"token": new_token, "error": error}, status)
        _cookie(response, signer, LOGIN_COOKIE, value, 1800)
        return response
    sessions: sessionmaker[Any] = request.app.state.sessions
    await run_in_threadpool(_signed_in, sessions, principal)
    value, _ = signer.issue(principal.key_prefix)
    response = RedirectResponse("/ui/answers", status_code=303)
    _cookie(response, signer, COOKIE, value, int(signer.ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


def _signed_in(sessions: sessionmaker[Any], principal: Principal) -> None:
    with sessions.begin() as session:
        record_event(
            session,
            actor=f"key:{principal.key_prefix}",
            action="ui.signed_in",
            tenant_id=principal.tenant_id,
            target="ui",
        )


@router.post("/logout")
def logout(
    request: Request, who: UiPrincipal, csrf: Annotated[str, Form(max_length=100)]
) -> Response:
    _same_origin(request)
    if csrf != who[1]:
        raise Forbidden("invalid form token")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/answers")
def answers(
    request: Request,
    who: UiPrincipal,
    session: SessionDep,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    route: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: uuid.UUID | None = None,
) -> Response:
    """The tenant's answers, newest first, with filters and search."""
    form = {"from": start or "", "to": end or "", "route": route or "", "status": status or ""}
    form |= {"user": user or "", "q": q or ""}

    def build() -> dict[str, Any]:
        flt = pages.AnswerFilter(_when(start), _when(end), route, status, user, q)
        routes = list(request.app.state.pipeline.routes)
        page = pages.answers(session, principal=who[0], flt=flt, cursor=cursor, routes=routes)
        return {**page, "form": form}

    return _page(request, who, "answers.html", build)


@router.get("/answers/{record_id}")
def answer(
    request: Request, who: UiPrincipal, session: SessionDep, record_id: uuid.UUID
) -> Response:
    """One answer's lineage."""
    return _page(
        request,
        who,
        "answer.html",
        lambda: pages.answer(session, principal=who[0], record_id=record_id),
    )


@router.get("/documents")
def documents(
    request: Request,
    who: UiPrincipal,
    session: SessionDep,
    collection: Annotated[str | None, Query(max_length=64)] = None,
    cursor: uuid.UUID | None = None,
) -> Response:
    return _page(
        request,
        who,
        "documents.html",
        lambda: pages.documents_page(
            session, principal=who[0], collection=collection or None, cursor=cursor
        ),
    )


@router.get("/documents/{document_id}")
def document(
    request: Request, who: UiPrincipal, session: SessionDep, document_id: uuid.UUID
) -> Response:
    return _page(
        request,
        who,
        "document.html",
        lambda: pages.document_page(session, principal=who[0], document_id=document_id),
    )


def _period(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    today = datetime.combine(date.today(), datetime.min.time(), UTC)
    first = _when(start, today - timedelta(days=30))
    last = _when(end, today + timedelta(days=1))
    assert first is not None and last is not None
    return first, last


@router.get("/reports")
def reports_page(
    request: Request,
    who: UiPrincipal,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    route: Annotated[str | None, Query(max_length=200)] = None,
    subject: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Every report kind for a period, in every format, and the evidence pack."""

    def build() -> dict[str, Any]:
        first, last = _period(start, end)
        return {
            "kinds": [(k, TITLES[k], SECTIONS[k]) for k in Kind],
            "formats": list(Format),
            "form": {
                "from": start or first.date().isoformat(),
                "to": end or last.date().isoformat(),
                "route": route or "",
                "subject": subject or "",
            },
        }

    return _page(request, who, "reports.html", build)


@router.get("/reports/{kind}")
def report_download(
    request: Request,
    who: UiPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    kind: Kind,
    fmt: Annotated[Format, Query(alias="format")] = Format.pdf,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    route: Annotated[str | None, Query(max_length=200)] = None,
    subject: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """A report as a download (the export is an admin event, as over the API)."""
    principal = who[0]
    try:
        first, last = _period(start, end)
        request_ = reports.Request(
            kind, principal.tenant_id, principal.tenant, first, last, route or None, subject or None
        )
        out = reports.export(
            session,
            request=request_,
            fmt=fmt,
            actor=f"ui:key:{principal.key_prefix}",
            origin=settings.log_origin,
        )
    except ProvenantError as exc:
        ctx = {"principal": principal, "csrf": who[1], "error": exc}
        return _render(request, "error.html", ctx, exc.status)
    return Response(
        out.content,
        media_type=out.media_type,
        headers={"Content-Disposition": render.disposition(out.filename)},
    )


@router.get("/evidence")
def evidence_download(
    request: Request,
    who: UiPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    route: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    principal = who[0]
    buffer = io.BytesIO()
    try:
        first, last = _period(start, end)
        evidence.write_pack(
            session,
            buffer,
            tenant_id=principal.tenant_id,
            tenant=principal.tenant,
            start=first,
            end=last,
            actor=f"ui:key:{principal.key_prefix}",
            origin=settings.log_origin,
            route=route or None,
            max_records=settings.evidence_max_records,
        )
    except ProvenantError as exc:
        ctx = {"principal": principal, "csrf": who[1], "error": exc}
        return _render(request, "error.html", ctx, exc.status)
    name = f"provenant-evidence-{principal.tenant}-{first:%Y%m%d}-{last:%Y%m%d}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": render.disposition(name)},
    )


@router.get("/integrity")
def integrity(
    request: Request, who: UiPrincipal, session: SessionDep, settings: SettingsDep
) -> Response:
    return _page(
        request,
        who,
        "integrity.html",
        lambda: pages.integrity_page(session, principal=who[0], origin=settings.log_origin),
    )
