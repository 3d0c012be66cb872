"""BM25-style sparse vectors with no model: words → stems → stable hashed indices.

A passage's vector holds, per term, BM25's saturated and length-normalised term frequency
``tf·(k1+1) / (tf + k1·(1 - b + b·len/avg_len))``; a query's holds 1 per term. Qdrant multiplies
by the inverse document frequency it keeps itself (the collection's sparse vector is declared
with ``Modifier.IDF``), so their dot product is the BM25 score. Term indices are the CRC-32 of
the stem: stable across processes and versions, so vectors written years apart still match.
The average passage length is a constant (as in Qdrant's own BM25 encoder), since a running
average would change the weights of passages already indexed.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import snowballstemmer

K1 = 1.2
B = 0.75
AVG_LEN = 120.0
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS_TEXT = """a about above after again against all am an and any are as at be because
    been before
    being below between both but by can did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with you your yours yourself yourselves"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_stemmer = snowballstemmer.stemmer("english")


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: sorted unique indices and their weights."""

    indices: list[int]
    values: list[float]


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return str(_stemmer.stemWord(word)) if word.isalpha() else word


def terms(text: str) -> list[str]:
    """The text's terms in order: lower-cased words, stop words dropped, English stems."""
    return [
        _stem(word)
        for word in _WORD.findall(text.lower())
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit())
    ]


def term_index(term: str) -> int:
    """The term's dimension (unsigned 32-bit)."""
    return zlib.crc32(term.encode("utf-8"))


def _vector(weights: dict[int, float]) -> Sparse:
    ordered = sorted(weights.items())
    return Sparse([i for i, _ in ordered], [w for _, w in ordered])


def _counts(words: Iterable[str]) -> Counter[int]:
    return Counter(term_index(t) for t in words)  # colliding terms add up


def passage_vector(text: str) -> Sparse:
    """A passage's BM25 term weights."""
    words = terms(text)
    norm = K1 * (1 - B + B * len(words) / AVG_LEN)
    return _vector({i: tf * (K1 + 1) / (tf + norm) for i, tf in _counts(words).items()})


def query_vector(text: str) -> Sparse:
    """A query's vector: each distinct term once (Qdrant applies the IDF)."""
    return _vector(dict.fromkeys(_counts(terms(text)), 1.0))
