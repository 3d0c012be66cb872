"""Per-key rate limits: a token bucket per API key, in the process that serves it."""

from __future__ import annotations

import math
import time
import uuid

from service.errors import RateLimited

_MAX_KEYS = 100_000  # buckets kept; the least recently refilled are dropped beyond this


class RateLimiter:
    """``rate`` requests per second per key, bursts of up to ``burst``. ``rate`` 0: no limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key_id: uuid.UUID) -> None:
        """Spend one token of the key's bucket, or raise 429 with a Retry-After."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            self._buckets[key_id] = (tokens, now)
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s for this key exceeded; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        if len(self._buckets) >= _MAX_KEYS and key_id not in self._buckets:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key_id] = (tokens - 1, now)
