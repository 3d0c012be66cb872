"""Documents built by the tests themselves: multi-page PDFs (fpdf2), DOCX (python-docx), HTML."""

from __future__ import annotations

import io

import docx
import httpx
from fpdf import FPDF


def pdf(pages: list[str], title: str | None = None) -> bytes:
    """A PDF with one page per text (Helvetica, so the text extracts as written)."""
    doc = FPDF()
    if title:
        doc.set_title(title)
    doc.set_font("Helvetica", size=11)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 6, text)
    return bytes(doc.output())


def docx_bytes(title: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    """A DOCX with a heading, paragraphs and optionally a table."""
    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def html(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><title>{title}</title><style>p{{color:red}}</style>"
        f"<script>var secret = 'not text';</script></head><body>{body}</body></html>"
    ).encode()


def upload(
    gateway_url: str, key: str, collection: str, filename: str, data: bytes, **fields: str
) -> httpx.Response:
    """POST /v1/documents as a multipart upload."""
    return httpx.post(
        f"{gateway_url}/v1/documents",
        headers={"Authorization": f"Bearer {key}"},
        data={"collection": collection, **fields},
        files={"file": (filename, data, "application/octet-stream")},
        timeout=60,
    )


def get(gateway_url: str, key: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(
        f"{gateway_url}{path}",
        headers={"Authorization": f"Bearer {key}"},
        params=params,  # type: ignore[arg-type]
        timeout=30,
    )
