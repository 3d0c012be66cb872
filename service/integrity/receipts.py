"""Receipts: a signed promise, given with every answer, that its record enters the log.

Like a Certificate Transparency SCT: a compact JWS (EdDSA) over the audit id, the record's leaf
hash, the answer's SHA-256, the time and the maximum merge delay. A client keeps it; later the
record's inclusion proof against a signed checkpoint shows the promise was kept.
"""

from __future__ import annotations

import time
from typing import Any

from service.integrity.signing import Signer


class Receipts:
    """Issues receipts for committed records."""

    def __init__(self, signer: Signer, max_merge_delay_s: int) -> None:
        self._signer = signer
        self._mmd = max_merge_delay_s

    def issue(self, row: dict[str, Any], answer_sha256: str | None = None) -> str:
        """The receipt of a record row as it was committed; ``answer_sha256`` is the hash of the
        answer as delivered when the record stores it redacted (default: the record's)."""
        return self._signer.receipt(
            {
                "iss": self._signer.origin,
                "sub": str(row["id"]),
                "leaf": row["leaf_sha256"],
                "answer_sha256": answer_sha256 or row["answer_sha256"],
                "iat": int(time.time()),
                "mmd": self._mmd,
            }
        )
