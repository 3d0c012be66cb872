"""The built-in ``extractive`` generator: no LLM, it quotes the retrieved passages' sentences
that share the most terms with the question, each followed by its ``[n]``.

Per source it picks the sentence (paragraphs are re-flowed, so hard-wrapped text does not cut
sentences) that best matches the question: the sum, over the question's terms it contains, of
their rarity among all the retrieved sentences (a term in every sentence says little), with the
next sentence added when the first is too short to stand alone. A source is quoted only if its
retrieval score is at least half the best one's and its sentence scores at least half the best
sentence's, so a passage retrieved on one common word is left out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

from service.documents.sparse import terms
from service.retrieval.sources import Source

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE = re.compile(r".+?(?:[.!?]+(?=\s|$)|$)")
NO_ANSWER = "The documents in this collection do not appear to answer that question."
_SHORT = 80


def _sentences(text: str) -> Iterator[tuple[str, bool]]:
    """(sentence, is a heading) in reading order."""
    for paragraph in _PARAGRAPH.split(text):
        flat = " ".join(paragraph.split())
        if not flat:
            continue
        if flat.startswith("#") or (len(flat) < _SHORT and not flat.endswith((".", "!", "?", ":"))):
            yield flat.lstrip("# "), True  # a heading, or a title line
            continue
        for m in _SENTENCE.finditer(flat):
            sentence = m.group(0).strip().lstrip("-*• ").strip()
            if sentence:
                yield sentence, False


Sentences = list[tuple[str, bool, set[str]]]


def _best_sentence(sentences: Sentences, weight: dict[str, float]) -> tuple[float, str] | None:
    """(score, quote) of a passage's best sentence, or None if none shares a question term."""
    best: tuple[float, int, str] | None = None
    for i, (sentence, heading, found) in enumerate(sentences):
        score = sum(weight.get(t, 0.0) for t in found)
        if not score or (best is not None and (score, int(not heading)) <= best[:2]):
            continue
        quote = sentence
        if len(quote) < _SHORT and i + 1 < len(sentences) and not sentences[i + 1][1]:
            quote = f"{quote} {sentences[i + 1][0]}"
        best = (score, int(not heading), quote)
    return (best[0], best[2]) if best is not None else None


def extractive_answer(question: str, sources: list[Source], max_quotes: int) -> str:
    """Quote the best sentence of each relevant source, in rank order, with its marker."""
    wanted = set(terms(question))
    split = [
        [(text, heading, wanted & set(terms(text))) for text, heading in _sentences(s.text or "")]
        for s in sources
    ]
    df = Counter(t for sentences in split for _, _, found in sentences for t in found)
    total = sum(len(sentences) for sentences in split) or 1
    weight = {t: math.log(1 + total / n) for t, n in df.items()}
    top_score = max((s.score or 0.0 for s in sources), default=0.0)
    found = [
        (s.ref, _best_sentence(sentences, weight))
        for s, sentences in zip(sources, split, strict=True)
        if (s.score or 0.0) >= top_score / 2
    ]
    scored = [(ref, best) for ref, best in found if best is not None]
    if not scored:
        return NO_ANSWER
    floor = max(best[0] for _, best in scored) / 2
    quotes = [(ref, best[1]) for ref, best in scored if best[0] >= floor][:max_quotes]
    lines = ["Here is what the documents say:", ""]
    lines += [f'- "{quote}" [{ref}]' for ref, quote in quotes]
    return "\n".join(lines)
