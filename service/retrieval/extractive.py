"""The built-in ``extractive`` generator: no LLM, it quotes the retrieved passages' sentences
that share the most terms with the question, each followed by its ``[n]``."""

from __future__ import annotations

import re

from service.documents.sparse import terms
from service.retrieval.sources import Source

_SENTENCE = re.compile(r"[^\n.!?]+(?:[.!?]+|$)", re.MULTILINE)
NO_ANSWER = "The documents in this collection do not appear to answer that question."


def _best_sentence(text: str, wanted: set[str]) -> str | None:
    best: tuple[int, int, str] | None = None
    sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text)]
    for i, sentence in enumerate(sentences):
        clean = sentence.lstrip("#>*-• \t").strip()
        if not clean:
            continue
        overlap = len(wanted & set(terms(clean)))
        heading = sentence.startswith("#") or not clean.endswith((".", "!", "?", ":"))
        score = (overlap, 0 if heading else 1)
        if overlap and (best is None or score > best[:2]):
            quote = clean
            if len(quote) < 80 and i + 1 < len(sentences):  # too short to stand alone
                quote = f"{quote} {sentences[i + 1].lstrip('#>*-• ').strip()}".strip()
            best = (*score, quote)
    return best[2] if best else None


def extractive_answer(question: str, sources: list[Source], max_quotes: int) -> str:
    """Quote the best sentence of each relevant source, in rank order, with its marker."""
    wanted = set(terms(question))
    quotes: list[tuple[int, str]] = []
    for s in sources:
        quote = _best_sentence(s.text or "", wanted)
        if quote:
            quotes.append((s.ref, quote))
        if len(quotes) >= max_quotes:
            break
    if not quotes:
        return NO_ANSWER
    lines = ["Here is what the documents say:", ""]
    lines += [f'- "{quote}" [{ref}]' for ref, quote in quotes]
    return "\n".join(lines)
