"""RFC 8785 (JSON Canonicalization Scheme) bytes, fast.

The reference is the ``rfc8785`` package (Trail of Bits). It is pure Python and costs ~35 µs for
an audit record's leaf document, which would make ``provenant verify`` on a million records take
longer than reading them. For the values leaves actually hold (ASCII object keys, strings, bools,
null, integers within ±(2**53 - 1), and floats whose shortest form is plain decimal) ``orjson``
with sorted keys writes exactly the same bytes in ~1 µs; ``tests/unit/test_canonical.py`` checks
that equality on generated documents. Anything outside that domain goes to the reference.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_SORTED = orjson.OPT_SORT_KEYS


def _fast(value: Any) -> bool:
    """True if orjson's sorted output is RFC 8785 for this value."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if isinstance(value, float):
        # plain decimal in both ECMAScript and orjson; integral floats print "1.0" vs "1"
        return 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _fast(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_fast(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``value`` (raises ``rfc8785.CanonicalizationError`` for
    values JSON cannot hold, such as NaN or integers beyond I-JSON's range)."""
    if _fast(value):
        return orjson.dumps(value, option=_SORTED)
    return rfc8785.dumps(value)


def canonical_trusted(doc: dict[str, Any]) -> bytes:
    """``canonical`` without the domain walk, for documents built by ``integrity.leaf`` whose
    fields are, by construction, ASCII-keyed strings, bools, nulls, safe integers and lists of
    those (the leaf tests assert it)."""
    return orjson.dumps(doc, option=_SORTED)


# digests of small JSON values already seen (sampling parameters, policy details, which repeat
# from answer to answer), keyed by orjson's sorted bytes: those name one JSON value (orjson
# writes each float in its shortest exact form and keeps 1 and 1.0 apart), except that it writes
# NaN and infinities as null, so values with a null are never taken from the cache
_DIGESTS: dict[bytes, str] = {}
_DIGESTS_MAX = 4096
_DIGEST_KEY_MAX = 512


def digest(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of a JSON value (how JSON fields enter a leaf)."""
    try:
        key = orjson.dumps(value, option=_SORTED)
    except TypeError:  # what canonical() reports for it
        key = b"null"
    if len(key) > _DIGEST_KEY_MAX or b"null" in key:
        return hashlib.sha256(canonical(value)).hexdigest()
    found = _DIGESTS.get(key)
    if found is None:
        found = hashlib.sha256(canonical(value)).hexdigest()
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[key] = found
    return found
