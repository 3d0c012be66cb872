"""The fast canonical JSON writes exactly what the RFC 8785 reference implementation writes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from service.integrity.canonical import canonical, digest

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=1500, deadline=None)
@given(_json)
def test_equals_the_reference_for_any_json_value(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.5, 0.0001, 123456789.125, -2.5e-3]},
        {"é": 1, "e": 2, "\U0001f600": 3, "\ufb33": 4},  # non-ASCII keys: UTF-16 order
        {"x": 1.0, "y": 1e21, "z": 1e-7, "w": -0.0},  # floats ECMAScript writes differently
        'control \x00\x01\x1f " \\ \u2028 \u007f é',
    ],
)
def test_edge_cases_match_the_reference(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)


def test_rfc8785_example_from_the_rfc() -> None:
    # RFC 8785 §3.2.3 sorting example, written here with its expected output
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
             "\u00f6": "Latin Small Letter O With Diaeresis"}  # fmt: skip
    keys = list(json.loads(canonical(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_digest_is_order_independent_and_value_sensitive() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1, "b": [1, 2]}) != digest({"a": 1, "b": [2, 1]})
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical(float("nan"))


@settings(max_examples=500, deadline=None)
@given(st.lists(_json, min_size=1, max_size=4))
def test_digest_of_each_value_is_its_canonical_hash_whatever_came_before(values: Any) -> None:
    # digest() remembers small values it has seen: asking again, or asking for a value that
    # orjson might confuse with an earlier one, must still give that value's own hash
    for value in [*values, *values]:
        assert digest(value) == hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def test_digest_tells_apart_what_orjson_writes_alike() -> None:
    assert digest({"t": 1.0}) != digest({"t": 1.5})
    assert digest({"t": 1.0}) == digest({"t": 1})  # RFC 8785 writes both as 1
    digest({"t": None})  # orjson writes NaN as null: a cached null must not stand for NaN
    with pytest.raises(rfc8785.CanonicalizationError):
        digest({"t": float("nan")})
