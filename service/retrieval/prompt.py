"""The question a retrieval answers, and the prompt that shows a generator numbered sources."""

from __future__ import annotations

from typing import Any

from service.retrieval.sources import Source


def query_text(messages: list[Any]) -> str:
    """The text of the last user message (text parts joined): what is searched for."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type", "text") == "text"
            )
    return ""


def numbered_sources(sources: list[Source]) -> str:
    """``[n] title (version v, page p)`` then the passage, for each source in rank order."""
    if not sources:
        return "(no sources were found)"
    blocks = []
    for s in sources:
        where = f"version {s.version}" + (f", page {s.page}" if s.page is not None else "")
        blocks.append(f"[{s.ref}] {s.title} ({where})\n{s.text}")
    return "\n\n".join(blocks)


def rag_messages(template: str, messages: list[Any], sources: list[Source]) -> list[Any]:
    """The client's messages behind one system message: the template with the sources filled in
    (``str.replace``, so other braces in a template are left alone)."""
    system = {"role": "system", "content": template.replace("{sources}", numbered_sources(sources))}
    return [system, *messages]
