"""The one per-item retry, for a call whose failure would cost a whole page its progress.

Retries have one owner per level (docs/architecture.md, "Retries and pacing"): botocore retries one
HTTP call, core.ratelimit paces every call and slows on throttles, Temporal's RetryPolicy retries
the activity from its heartbeat. An activity retries by hand only an item of a page whose
progress is not yet heartbeated, and only through `patiently`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import is_retryable

ITEM_TRIES = 5
T = TypeVar("T")


def patiently(
    fn: Callable[..., T],
    *args: Any,
    tries: int = ITEM_TRIES,
    when: Callable[[BaseException], bool] = is_retryable,
    **kwargs: Any,
) -> T:
    """`fn(*args, **kwargs)`, tried again `tries` times in all with growing, jittered pauses while it
    fails with an AWS error `when` accepts (after botocore's own tries); any other error at once."""
    attempt = 1
    while True:
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as e:
            if attempt >= tries or not when(e):
                raise
        time.sleep(min(8.0, 0.25 * 2**attempt) * (1 + random.random()))
        attempt += 1
