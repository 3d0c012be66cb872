"""Renderers: one report, four formats. JSON and CSV for tools, HTML for reading (tables and
inline SVG charts, print CSS), PDF from that same HTML by WeasyPrint, so the filed PDF and the
page on screen say the same thing."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape

from service.reports import charts
from service.reports.kinds import Format
from service.reports.model import Report


def _plain(value: Any) -> Any:
    """A cell as JSON/CSV carry it: UTC ISO 8601 timestamps, ids as strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date | uuid.UUID):
        return str(value)
    return value


def _cell(value: Any) -> str:
    """A cell as a person reads it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def as_dict(report: Report) -> dict[str, Any]:
    """The JSON document of a report: header, then each section's columns and rows."""
    return {
        "report": report.kind.value,
        "title": report.title,
        **{k: v for k, v in report.header.items()},
        "sections": {
            t.section.key: {
                "title": t.section.title,
                "columns": t.section.names,
                "note": t.note,
                "rows": [{c: _plain(r.get(c)) for c in t.section.names} for r in t.rows],
            }
            for t in report.tables
        },
    }


def to_json(report: Report) -> bytes:
    return orjson.dumps(as_dict(report), default=_plain, option=orjson.OPT_INDENT_2)


def _header_rows(report: Report) -> list[list[str]]:
    h = report.header
    cp = h.get("checkpoint") or {}
    filters = h.get("filters") or {}
    return [
        ["report", report.kind.value],
        ["title", report.title],
        ["period_from", h["period"]["from"]],
        ["period_to", h["period"]["to"]],
        ["filters", "; ".join(f"{k}={v}" for k, v in filters.items() if v is not None)],
        ["tenant", h["tenant"]["name"]],
        ["tenant_id", h["tenant"]["id"]],
        ["generated_at", h["generated_at"]],
        ["generated_by", h["generated_by"]],
        ["generator", h["generator"]],
        ["checkpoint_tree_size", str(cp.get("tree_size", ""))],
        ["checkpoint_root_sha256", cp.get("root_sha256", "")],
        ["checkpoint_key_id", cp.get("key_id", "")],
    ]


def safe_filename(name: str) -> str:
    """``name`` as a plain file name: letters, digits, ``.``, ``_`` and ``-`` only (tenant
    names may hold any Unicode, quotes or slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "download"


def disposition(filename: str, kind: str = "attachment") -> str:
    """A ``Content-Disposition`` value for a download: an ASCII ``filename`` any client can
    use and the exact name as RFC 6266 ``filename*``."""
    exact = quote(filename, safe="")
    return f"{kind}; filename=\"{safe_filename(filename)}\"; filename*=UTF-8''{exact}"


# spreadsheet programs run a cell that starts like a formula: such text is written quoted
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    cell = "" if value is None else _plain(value)
    return "'" + cell if isinstance(cell, str) and cell.startswith(_FORMULA) else cell


def to_csv(report: Report) -> bytes:
    """The header as ``key,value`` rows, a blank line, then each section: its key, its column
    row and its rows, sections separated by a blank line."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerows([_csv_cell(c) for c in row] for row in _header_rows(report))
    for t in report.tables:
        w.writerow([])
        w.writerow([f"section:{t.section.key}"] + ([f"note:{t.note}"] if t.note else []))
        w.writerow(t.section.names)
        for r in t.rows:
            w.writerow([_csv_cell(r.get(c)) for c in t.section.names])
    return out.getvalue().encode("utf-8")


@lru_cache(maxsize=1)
def templates() -> Environment:
    """The report templates (autoescaped: every value a record holds is untrusted text)."""
    env = Environment(
        loader=PackageLoader("service.reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = _cell
    env.globals["svg"] = charts.svg
    return env


def to_html(report: Report) -> bytes:
    page = templates().get_template("report.html")
    return page.render(report=report, header=report.header).encode("utf-8")


def to_pdf(report: Report) -> bytes:
    """The HTML rendered by WeasyPrint; it fetches nothing (no URL in the page, and any
    fetch is refused), so a report renders the same offline."""
    from weasyprint import HTML

    def no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError(f"reports fetch nothing: {url[:80]}")

    document = HTML(string=to_html(report).decode("utf-8"), url_fetcher=no_fetch)
    pdf: bytes = document.write_pdf()
    return pdf


RENDERERS = {Format.json: to_json, Format.csv: to_csv, Format.html: to_html, Format.pdf: to_pdf}


def render(report: Report, fmt: Format) -> bytes:
    return RENDERERS[fmt](report)
