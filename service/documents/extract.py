"""Turning an uploaded file into page texts: .txt, .md, .pdf (pypdf, one text per page), .html
(BeautifulSoup over lxml) and .docx (python-docx).

Offsets stored with chunks point into these extracted texts (line ends normalised to ``\\n``), so
the same bytes always give the same pages. Bad input raises a 4xx domain error with a stable
code; nothing is written before extraction succeeds.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from service.errors import CorruptDocument, EmptyDocument, UnsupportedDocumentType

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
    ".docx": DOCX,
}
SUPPORTED = ".txt, .md, .pdf, .html, .docx"
# what the parsers raise on malformed input (their documented errors and the structural ones a
# hostile file provokes); anything else is a bug and stays a 500
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    RecursionError,
    zlib.error,
    struct.error,
    zipfile.BadZipFile,
)
_BLOCKS = (
    "p, div, li, h1, h2, h3, h4, h5, h6, tr, br, section, article, table, ul, ol, pre, "
    "blockquote, header, footer, dd, dt, hr, main, nav, aside, figcaption"
)


@dataclass(frozen=True)
class Extracted:
    """The text of a file: one entry per page (``paginated``) or a single text."""

    media_type: str
    pages: list[str]
    paginated: bool
    title: str | None = None


def media_type_for(filename: str | None, declared: str | None) -> str:
    """The media type to parse a file as: by its extension, else by its declared type."""
    if filename:
        suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
        if suffix in MEDIA_TYPES:
            return MEDIA_TYPES[suffix]
        if suffix:
            raise UnsupportedDocumentType(
                f"files of type {suffix!r} are not supported (supported: {SUPPORTED})"
            )
    base = (declared or "").split(";")[0].strip().lower()
    if base in MEDIA_TYPES.values():
        return base
    raise UnsupportedDocumentType(
        f"unsupported document type {base or 'unknown'!r} (supported: {SUPPORTED})"
    )


def extract(data: bytes, media_type: str, *, max_pages: int) -> Extracted:
    """Extract the page texts; raise EmptyDocument / CorruptDocument on unusable input."""
    if not data:
        raise EmptyDocument("the document is empty")
    if media_type == "application/pdf":
        out = _pdf(data, max_pages)
    elif media_type == DOCX:
        out = _docx(data)
    elif media_type == "text/html":
        out = _html(data)
    elif media_type in ("text/plain", "text/markdown"):
        text = _normalise(_utf8(data))
        out = Extracted(media_type, [text], False, _text_title(text, media_type))
    else:
        raise UnsupportedDocumentType(f"unsupported document type {media_type!r}")
    if not any(page.strip() for page in out.pages):
        raise EmptyDocument("no text could be extracted from the document")
    return out


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptDocument(f"the text is not valid UTF-8 (byte {exc.start})") from exc


def _text_title(text: str, media_type: str) -> str | None:
    """A Markdown file's first heading; a text file's first line when a blank line follows it."""
    lines = text.lstrip().split("\n", 2)
    first = lines[0].strip()
    if media_type == "text/markdown":
        for line in text.splitlines():
            heading = re.match(r"^#{1,6}\s+(.+?)\s*#*$", line.strip())
            if heading:
                return heading.group(1)[:500]
            if line.strip():
                return None
        return None
    if first and len(first) <= 120 and len(lines) > 1 and not lines[1].strip():
        return first
    return None


def _pdf(data: bytes, max_pages: int) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    errors: tuple[type[BaseException], ...] = (PyPdfError, *_PARSE_ERRORS)
    if not data.lstrip()[:5] == b"%PDF-":
        raise CorruptDocument("the file is not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptDocument("the PDF is encrypted")
        count = len(reader.pages)
        if count > max_pages:
            raise CorruptDocument(f"the PDF has {count} pages; at most {max_pages} are accepted")
        pages = [_normalise(page.extract_text() or "") for page in reader.pages]
        meta = reader.metadata
        title = meta.title if meta is not None else None
    except errors as exc:
        raise CorruptDocument(f"the PDF could not be read: {type(exc).__name__}") from exc
    if count == 0:
        raise EmptyDocument("the PDF has no pages")
    return Extracted("application/pdf", pages, True, title.strip()[:500] if title else None)


def _docx(data: bytes) -> Extracted:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import LxmlError

    errors: tuple[type[BaseException], ...] = (PackageNotFoundError, LxmlError, *_PARSE_ERRORS)
    try:
        document = docx.Document(io.BytesIO(data))
        parts: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells = [cell.text.strip() for cell in row.cells]
                    parts.append(" | ".join(c for c in cells if c))
            else:
                parts.append(block.text)
        title = document.core_properties.title
    except errors as exc:
        raise CorruptDocument(f"the DOCX could not be read: {type(exc).__name__}") from exc
    text = _normalise("\n\n".join(p.strip() for p in parts if p.strip()))
    return Extracted(DOCX, [text], False, title.strip()[:500] if title else None)


def _html(data: bytes) -> Extracted:
    from bs4 import BeautifulSoup

    with warnings.catch_warnings():  # bs4 warns about odd input (looks like a URL, XML...)
        warnings.simplefilter("ignore")
        try:
            soup = BeautifulSoup(data, "lxml")
        except (ValueError, LookupError, TypeError, AssertionError) as exc:
            raise CorruptDocument(f"the HTML could not be read: {type(exc).__name__}") from exc
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for tag in soup.select(_BLOCKS):
        tag.insert_before("\n\n")
        tag.append("\n\n")
    lines = [" ".join(line.split()) for line in soup.get_text().splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return Extracted("text/html", [text], False, title[:500] if title else None)
