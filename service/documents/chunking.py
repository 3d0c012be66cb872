"""Cutting page texts into passages that keep their page and exact character offsets.

Written by hand: the offsets must be exact (``page_text[start:end] == passage.text``) for a chunk
to be checkable against its page, and the splitters that libraries offer either lose offsets or
pull in a framework. Paragraphs are packed up to ``max_chars``; a longer paragraph is split at
sentence ends, a longer sentence at whitespace. A Markdown heading starts a new passage when the
current one is already substantial, so a section's heading travels with its text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n[ \t]*\n|\s*\Z)", re.DOTALL)
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s)|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Passage:
    """A chunk to be: its page (None without pages), offsets into that page's text, the text."""

    page: int | None
    start: int
    end: int
    text: str


def chunk_pages(pages: list[str], *, paginated: bool, max_chars: int) -> list[Passage]:
    """Every passage of every page, in reading order."""
    out: list[Passage] = []
    for number, text in enumerate(pages, start=1):
        page = number if paginated else None
        for start, end in _pack(text, max_chars):
            out.append(Passage(page, start, end, text[start:end]))
    return out


def _spans(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    for m in pattern.finditer(text, lo, hi):
        yield m.start(), m.end()


def _pieces(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """Paragraph spans, with paragraphs over ``max_chars`` cut into sentences or words."""
    for p_start, p_end in _spans(_PARAGRAPH, text, 0, len(text)):
        if p_end - p_start <= max_chars:
            yield p_start, p_end
            continue
        for s_start, s_end in _spans(_SENTENCE, text, p_start, p_end):
            yield from _hard_split(text, s_start, s_end, max_chars)


def _hard_split(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    while end - start > max_chars:
        cut = text.rfind(" ", start + max_chars // 2, start + max_chars)
        cut = cut if cut > start else start + max_chars
        piece_end = cut
        while piece_end > start and text[piece_end - 1].isspace():
            piece_end -= 1
        yield start, piece_end
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        yield start, end


def _pack(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """Greedy packing of consecutive pieces into spans of at most ``max_chars``."""
    current: tuple[int, int] | None = None
    for start, end in _pieces(text, max_chars):
        if current is None:
            current = (start, end)
            continue
        heading = text.startswith("#", start) and current[1] - current[0] >= max_chars // 3
        if end - current[0] <= max_chars and not heading:
            current = (current[0], end)
        else:
            yield current
            current = (start, end)
    if current is not None:
        yield current
