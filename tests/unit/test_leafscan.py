"""The native verify scan's pieces write exactly what Python writes: floats as repr(), orjson
and RFC 8785 spell them, and JSON columns back as canonical() / orjson with sorted keys.

Where the C code is unsure it answers None (the entry then goes to the Python check); these
tests also hold it to answering on everything ordinary, so the fast path is really taken.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from service.integrity import leafscan
from service.integrity.canonical import canonical

# CI requires the extension (PROVENANT_TEST_REQUIRE_NATIVE=1): a build that failed there fails
# these tests instead of skipping them
pytestmark = pytest.mark.skipif(
    not leafscan.available() and os.environ.get("PROVENANT_TEST_REQUIRE_NATIVE") != "1",
    reason="the C extension was not built (no compiler at install)",
)
if leafscan.available():
    from service.integrity import _leafscan


def _spellings(value: float) -> dict[str, bytes]:
    return {
        "repr": repr(value).encode(),
        "orjson": orjson.dumps(value),
        "jcs": rfc8785.dumps(value),
    }


def _check_float(value: float) -> None:
    for style, expected in _spellings(value).items():
        assert _leafscan.format_float(value, style) == expected, (value, style)


def test_the_extension_is_built_where_tests_run() -> None:
    # make test installs with a compiler: a missing build would silently test nothing native
    assert leafscan.available()


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_double_is_spelt_as_repr_orjson_and_rfc8785_spell_it(value: float) -> None:
    _check_float(value)


def test_random_bit_patterns_and_short_decimals_are_spelt_alike() -> None:
    rnd = random.Random(8785)
    values = [0.1, 0.5, 1.0, 2.0, 1e16, 1e15, 1e-4, 1e-5, 1e-6, 1e-7, 1e21, 1e22, 5e-324,
              1.7976931348623157e308, 9007199254740993.0, 123456789.125]  # fmt: skip
    values.extend(2.0**e for e in range(-1074, 1024))  # powers of two: lopsided intervals
    for _ in range(100_000):
        values.append(struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0])
        values.append(round(rnd.uniform(0, 10 ** rnd.randint(0, 9)), rnd.randint(0, 6)))
        values.append(rnd.random() * 10 ** rnd.randint(-12, 25))
    for value in values:
        if math.isfinite(value):
            _check_float(value)
            _check_float(-value)


def test_non_finite_floats_are_left_to_python() -> None:
    for value in (math.inf, -math.inf, math.nan):
        assert _leafscan.format_float(value, "repr") is None


_keys = st.text(alphabet=st.characters(max_codepoint=127), max_size=8)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point: controls, surrogate pairs once escaped, U+2028...
)
_plain_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=25,
)


def _stored_forms(value: Any) -> list[bytes]:
    """How a JSON column can hold the value: orjson (the engine's serializer) and json.dumps
    (ensure_ascii: \\uXXXX escapes and surrogate pairs, spaces after separators)."""
    return [orjson.dumps(value), json.dumps(value).encode()]


@settings(max_examples=1500, deadline=None)
@given(_plain_json)
def test_json_columns_are_written_back_as_python_writes_them(value: Any) -> None:
    for text in _stored_forms(value):
        loaded = orjson.loads(text)  # what SQLAlchemy hands leaf.py
        assert _leafscan.canonical_json(text, "jcs") == canonical(loaded)
        assert _leafscan.canonical_json(text, "orjson") == orjson.dumps(
            loaded, option=orjson.OPT_SORT_KEYS
        )


@settings(max_examples=500, deadline=None)
@given(st.recursive(_scalars, lambda i: st.dictionaries(st.text(), i, max_size=4), max_leaves=10))
def test_json_it_is_unsure_of_is_left_to_python_never_misspelt(value: Any) -> None:
    # any keys (non-ASCII ones sort by UTF-16 code units in RFC 8785): None or the same bytes
    for text in _stored_forms(value):
        loaded = orjson.loads(text)
        for style, expected in (
            ("jcs", canonical(loaded)),
            ("orjson", orjson.dumps(loaded, option=orjson.OPT_SORT_KEYS)),
        ):
            assert _leafscan.canonical_json(text, style) in (None, expected)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": 1, "a": 2}',  # duplicate keys: orjson keeps the last
        b'{"\xc3\xa9": 1, "e": 2}',  # non-ASCII key
        b'"\\ud800"',  # lone surrogate: orjson refuses it
        b"12345678901234567890",  # beyond 18 digits: orjson reads a float
        b"9007199254740993",  # beyond I-JSON's integers: rfc8785 refuses it
        b"1e400",  # infinity: orjson refuses it
        b"[1,]",
        b'{"a":1} x',
        b'"tab\tinside"',  # a raw control character
        b"[" * 80 + b"]" * 80,  # deeper than the parser goes
    ],
)
def test_unusual_json_is_left_to_python(text: bytes) -> None:
    assert _leafscan.canonical_json(text, "jcs") is None


@pytest.mark.parametrize(
    ("text", "jcs", "orjson_sorted"),
    [
        (b'{"b":[1.0,2.5,-0.0],"a":1E2}', b'{"a":100,"b":[1,2.5,0]}',
         b'{"a":100.0,"b":[1.0,2.5,-0.0]}'),
        (b'["\\u00e9\\ud83d\\ude00\\u2028"]', '["é😀\u2028"]'.encode(), '["é😀\u2028"]'.encode()),
        (b'{"z": null, "y": {"b": true, "a": false}}', b'{"y":{"a":false,"b":true},"z":null}',
         b'{"y":{"a":false,"b":true},"z":null}'),
    ],
)  # fmt: skip
def test_known_spellings(text: bytes, jcs: bytes, orjson_sorted: bytes) -> None:
    assert _leafscan.canonical_json(text, "jcs") == jcs == canonical(orjson.loads(text))
    assert _leafscan.canonical_json(text, "orjson") == orjson_sorted
