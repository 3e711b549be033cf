"""Start spacing for rate-limited tools: a token bucket with an injected clock.

`rate_limit_delay` (least seconds between two starts) and `rate_limit` (starts per second) both become
one bucket of capacity 1 that refills at `1 / interval` tokens a second, so two starts are never closer
than the interval, and a quiet period does not bank a burst. Time is always passed in: the scheduler
that owns the bucket has no clock of its own.
"""
from __future__ import annotations


class TokenBucket:
    """Allows one start per `interval` seconds (capacity tokens at most in a burst)."""

    def __init__(self, interval: float, capacity: int = 1):
        self.interval = max(0.0, float(interval))
        self.capacity = max(1, capacity)
        self._tokens = float(self.capacity)
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
            return
        if self.interval > 0 and now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) / self.interval)
        self._stamp = max(self._stamp, now)

    def wait_time(self, now: float) -> float:
        """Seconds until a start is allowed (0 when one is allowed now)."""
        if self.interval <= 0:
            return 0.0
        self._refill(now)
        if self._tokens >= 1.0 - 1e-9:
            return 0.0
        return (1.0 - self._tokens) * self.interval

    def take(self, now: float) -> bool:
        """Use one token if there is one; True when the start may happen now."""
        if self.interval <= 0:
            return True
        if self.wait_time(now) > 0:
            return False
        self._tokens -= 1.0
        return True
