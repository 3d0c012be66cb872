"""Pure parts of retrieval: chunk offsets, sparse vectors, citation parsing, source paths, the
extractive generator, file-type detection."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.documents.chunking import chunk_pages
from service.documents.extract import media_type_for
from service.documents.sparse import passage_vector, query_vector, term_index, terms
from service.errors import UnsupportedDocumentType
from service.retrieval.citations import cited_refs
from service.retrieval.extractive import NO_ANSWER, extractive_answer
from service.retrieval.passthrough import at_path
from service.retrieval.sources import Source

_TOKENS = ["word", "a", "é", ".", "!", "?", " ", "  ", "\t", "\n", "\n\n", "# ", "x" * 700]
_TEXT = st.lists(st.sampled_from(_TOKENS), max_size=400).map("".join)


@settings(max_examples=150, deadline=None)
@given(pages=st.lists(_TEXT, min_size=1, max_size=3), max_chars=st.integers(200, 600))
def test_chunks_are_exact_slices_in_order_covering_every_word(
    pages: list[str], max_chars: int
) -> None:
    passages = chunk_pages(pages, paginated=True, max_chars=max_chars)
    for number, page in enumerate(pages, start=1):
        mine = [p for p in passages if p.page == number]
        previous_end = 0
        for p in mine:
            assert page[p.start : p.end] == p.text
            assert p.text == p.text.strip() and p.text
            assert len(p.text) <= max_chars
            assert p.start >= previous_end
            previous_end = p.end
        covered = "".join(p.text for p in mine)
        assert "".join(page.split()) == "".join(covered.split())


def test_unpaginated_text_has_no_page_numbers() -> None:
    [p] = chunk_pages(["  Hello there.  "], paginated=False, max_chars=500)
    assert (p.page, p.start, p.end, p.text) == (None, 2, 14, "Hello there.")


def test_sparse_vectors_are_stemmed_stable_and_sorted() -> None:
    assert terms("The Policies and the policy!") == ["polici", "polici"]
    vector = passage_vector("Parental leave is sixteen weeks; leave is paid.")
    assert vector.indices == sorted(set(vector.indices))
    weights = dict(zip(vector.indices, vector.values, strict=True))
    assert weights[term_index("leav")] > weights[term_index("parent")]  # tf 2 vs 1, saturated
    assert weights[term_index("leav")] < 2 * weights[term_index("parent")]
    assert query_vector("leave LEAVE leaves").values == [1.0]
    assert query_vector("the of and").indices == []
    assert term_index("leav") == 3676835971  # CRC-32: fixed forever, vectors outlive processes


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("See [1].", {1}),
        ("Both [1][2] agree.", {1, 2}),
        ("Per [1, 3] and [2;4]", {1, 2, 3, 4}),
        ("Range [2-4]", {2, 3, 4}),
        ("[7] is out of range, [0] too", set()),
        ("A link [1](http://x) is not a citation", set()),
        ("array[1] counts, as a citation", {1}),
        ("no citation", set()),
    ],
)
def test_citations_are_parsed_in_every_common_form(text: str, refs: set[int]) -> None:
    assert cited_refs(text, 5) == refs


def test_source_paths_accept_dots_indexes_and_a_dollar_root() -> None:
    body = {"choices": [{"message": {"context": {"sources": [1, 2]}}}]}
    for path in ("choices.0.message.context.sources", "$.choices[0].message.context.sources"):
        assert at_path(body, path) == [1, 2]
    assert at_path(body, "choices.5.message") is None
    assert at_path(body, "choices.x") is None


def test_the_extractive_generator_quotes_matching_sentences_with_markers() -> None:
    sources = [
        Source(ref=1, score=3.0, text="# Leave\n\nEmployees get 25 days of\nleave. Ask HR."),
        Source(ref=2, score=2.5, text="The canteen opens at eight."),
        Source(ref=3, score=2.0, text="Unused leave days carry over until March."),
        Source(ref=4, score=0.5, text="Leave days are counted in the leave portal."),
    ]
    answer = extractive_answer("how many leave days carry over", sources, max_quotes=3)
    # re-flowed across the line break; a short sentence takes the next one along
    assert '- "Employees get 25 days of leave. Ask HR." [1]' in answer
    assert '- "Unused leave days carry over until March." [3]' in answer
    assert "[2]" not in answer  # no shared term
    assert "[4]" not in answer  # retrieved with under half the best score
    only_common = extractive_answer("leave", sources[:1] + sources[2:3], max_quotes=3)
    assert "[1]" in only_common and "[3]" in only_common
    assert extractive_answer("parking", sources, max_quotes=3) == NO_ANSWER


def test_file_types_come_from_the_extension_then_the_declared_type() -> None:
    assert media_type_for("Report.PDF", None) == "application/pdf"
    assert media_type_for(None, "text/markdown; charset=utf-8") == "text/markdown"
    assert media_type_for("noext", "text/html") == "text/html"
    with pytest.raises(UnsupportedDocumentType):
        media_type_for("sheet.xlsx", "text/plain")
    with pytest.raises(UnsupportedDocumentType):
        media_type_for(None, "application/octet-stream")


def test_a_negative_zero_score_is_recorded_as_zero() -> None:
    # SQLite reads a stored -0.0 back as 0.0: a leaf that spelled "-0.0" would never verify
    row = Source(ref=1, score=-0.0).retrieval_row()
    assert math.copysign(1.0, row["score"]) == 1.0
    assert Source(ref=1, score=-0.25).retrieval_row()["score"] == -0.25
    assert Source(ref=1).retrieval_row()["score"] is None
