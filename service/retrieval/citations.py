"""Parsing ``[n]`` citations from an answer: ``[1]``, ``[1][2]``, ``[1, 2]``, ``[1-3]``."""

from __future__ import annotations

import re

_GROUP = re.compile(r"\[\s*(\d{1,3}(?:\s*(?:[,;]|[-\u2013])\s*\d{1,3})*)\s*\](?!\()")
_ITEM = re.compile(r"(\d{1,3})(?:\s*[-\u2013]\s*(\d{1,3}))?")


def cited_refs(text: str, count: int) -> set[int]:
    """The source numbers (1..count) the text cites; a Markdown link ``[1](…)`` is not one."""
    refs: set[int] = set()
    for group in _GROUP.finditer(text):
        for item in _ITEM.finditer(group.group(1)):
            lo = int(item.group(1))
            hi = int(item.group(2)) if item.group(2) else lo
            if hi - lo > 50:
                continue
            refs.update(n for n in range(lo, hi + 1) if 1 <= n <= count)
    return refs
