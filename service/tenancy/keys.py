"""API key format: ``pvn_<prefix>_<secret>``; the prefix finds the row, the hash proves the key.

Keys carry 256 bits of randomness, so a plain SHA-256 is a sufficient at-rest hash (a slow
password hash protects low-entropy secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_SCHEME = "pvn"


def new_key() -> tuple[str, str]:
    """Return (prefix, full plaintext key)."""
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    """The at-rest form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 12 or len(key) > 200:
        return None
    return parts[1]


def matches(key: str, stored_sha256: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(key_hash(key), stored_sha256)
