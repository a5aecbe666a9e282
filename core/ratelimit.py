"""One adaptive rate limiter per (region, API), shared by every thread of a process.

AWS IoT quotas are per account, region and API (CreateThing 100 TPS, ListThings 10 TPS...). The
limiter starts at the configured rate, halves it on every throttle and climbs back by 5% per second
of calm (AIMD), so a fleet-wide operation settles just under what the account allows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from core import metrics

_MIN_RATE = 0.5


@dataclass
class _Bucket:
    rate: float
    ceiling: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)
    last_throttle: float = 0.0


class RateLimiter:
    def __init__(self, per_api: dict[str, float], default_rps: float):
        self._per_api = per_api
        self._default = default_rps
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, region: str, api: str) -> _Bucket:
        key = (region, api)
        b = self._buckets.get(key)
        if b is None:
            rate = self._per_api.get(api, self._default)
            b = self._buckets[key] = _Bucket(rate=rate, ceiling=rate, tokens=min(rate, 1.0))
        return b

    def acquire(self, region: str, api: str) -> None:
        """Block until one call of `api` in `region` is allowed."""
        while True:
            with self._lock:
                b = self._bucket(region, api)
                now = time.monotonic()
                elapsed = now - b.stamp
                b.stamp = now
                if b.rate < b.ceiling and now - b.last_throttle > 1.0:
                    b.rate = min(b.ceiling, b.rate * (1 + 0.05 * elapsed) + 0.1 * elapsed)
                b.tokens = min(max(b.rate, 1.0), b.tokens + elapsed * b.rate)
                if b.tokens >= 1.0:
                    b.tokens -= 1.0
                    return
                wait = (1.0 - b.tokens) / b.rate
            time.sleep(min(wait, 1.0))

    def throttled(self, region: str, api: str) -> None:
        """Record an AWS throttle: halve the rate for this API in this region."""
        with self._lock:
            b = self._bucket(region, api)
            b.rate = max(_MIN_RATE, b.rate / 2)
            b.tokens = 0.0
            b.last_throttle = time.monotonic()
        metrics.AWS_THROTTLES.labels(region=region, api=api).inc()

    def rate(self, region: str, api: str) -> float:
        with self._lock:
            return self._bucket(region, api).rate
