"""Reading shadows for the shadow activities: one thing's requests paced, a page's things run
with bounded concurrency, the scope listed a page at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from activities.recovery_point import DeviceLoss, lost_writes
from activities.shadow_merge import ShadowMerge, merge_shadow
from core.aws import AwsClients, fetch_page
from core.errors import (
    ACCESS_CODES,
    error_code,
    failing_as,
    is_not_found,
    is_retryable,
    is_throttle,
    to_application_error,
)
from core.retry import patiently

THROTTLE_TRIES = 5  # tries of one throttled shadow request before it stops the page
PER_THING_RPS = 20.0  # AWS IoT's shadow requests per second per thing (overridable: quotas ShadowPerThing)


class ShadowPacer:
    """One thing's shadow requests: under AWS's per-thing rate, and patient with throttling.

    The rate limiter has already halved the region's rate when a throttle comes back; a throttled
    call is then retried (core.retry) before it may stop the page and cost it the things in flight.
    """

    def __init__(self, aws: AwsClients):
        self._gap = 1.0 / aws.cfg.quotas.per_api.get("ShadowPerThing", PER_THING_RPS)
        self._last: dict[str, float] = {}

    def call(self, region: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        def paced() -> Any:
            wait = self._last.get(region, 0.0) + self._gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last[region] = time.monotonic()
            return method(**kwargs)

        return patiently(paced, tries=THROTTLE_TRIES, when=is_throttle)


def compared_shadows(
    aws: AwsClients, source: str, target: str, thing: str
) -> Iterator[tuple[str | None, ShadowMerge]]:
    """Each shadow of a thing in the source (classic, then named), merged into its copy in the target."""
    pace = ShadowPacer(aws)
    for name in [None, *named_shadows(aws, source, thing, pace)]:
        yield (
            name,
            merge_shadow(
                get_shadow(aws, source, thing, name, pace), get_shadow(aws, target, thing, name, pace)
            ),
        )


def run_page(
    things: list[str],
    skip: set[int],
    concurrency: int,
    work: Callable[[str], Any],
    done: Callable[[int, Any], None],
    beat: Callable[[], None],
    doing: str,
) -> None:
    """Run `work` over the page's things with bounded concurrency, calling `done` as each finishes.

    The first retryable or access error stops the page: nothing new starts, running things finish
    (and are recorded), then the error is raised as an ApplicationError saying whether to retry.
    Waiting wakes up every few seconds to heartbeat, which is also how cancellation arrives.
    """
    pool = futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="shadow")
    error: BaseException | None = None
    try:
        pending = {pool.submit(work, t): i for i, t in enumerate(things) if i not in skip}
        while pending:
            finished, _ = futures.wait(pending, timeout=5, return_when=futures.FIRST_COMPLETED)
            if not finished:
                beat()
            for f in finished:
                index = pending.pop(f)
                if f.exception() is not None:
                    error = error or f.exception()
                    for other in pending:
                        other.cancel()
                    continue
                done(index, f.result())
            if error is not None:
                pending = {f: i for f, i in pending.items() if not f.cancelled()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        if isinstance(error, ClientError | BotoCoreError):
            raise to_application_error(error, doing, "") from error
        raise error


def list_scope_page(
    aws: AwsClients, region: str, thing_group: str | None, token: str | None, page_size: int
) -> tuple[list[str], str | None]:
    """One page of thing names: a thing group's (with its subgroups) or every thing in the region."""
    iot = aws.iot(region)
    with failing_as(f"listing things of {thing_group or 'the fleet'}", region):
        if thing_group:
            return fetch_page(
                iot,
                "list_things_in_thing_group",
                "things",
                token,
                page_size,
                thingGroupName=thing_group,
                recursive=True,
            )
        things, token = fetch_page(iot, "list_things", "things", token, page_size)
    return [t["thingName"] for t in things], token


def named_shadows(aws: AwsClients, region: str, thing: str, pace: ShadowPacer) -> list[str]:
    names: list[str] = []
    token: str | None = None
    while True:
        kwargs = {"nextToken": token} if token else {}
        resp = pace.call(
            region, aws.iot_data(region).list_named_shadows_for_thing, thingName=thing, pageSize=100, **kwargs
        )
        names += resp.get("results", [])
        token = resp.get("nextToken")
        if not token:
            return sorted(set(names))


def get_shadow(aws: AwsClients, region: str, thing: str, name: str | None, pace: ShadowPacer) -> dict | None:
    """A shadow document, or None when the thing has no such shadow in `region`."""
    try:
        kwargs = {"shadowName": name} if name else {}
        resp = pace.call(region, aws.iot_data(region).get_thing_shadow, thingName=thing, **kwargs)
    except ClientError as e:
        if is_not_found(e):
            return None
        raise
    return json.loads(resp["payload"].read())


def label(thing: str, shadow: str | None) -> str:
    return thing if shadow is None else f"{thing}#{shadow}"


def thing_differences(aws: AwsClients, source: str, target: str, thing: str) -> list[str]:
    """What a sync would still change in each shadow of a thing, one line per differing shadow."""
    try:
        return [
            f"{label(thing, name)}: {len(merge.stale)} stale leaves "
            f"({merge.stale[0].path if merge.stale else '?'} ...)"
            for name, merge in compared_shadows(aws, source, target, thing)
            if merge.payload is not None
        ]
    except ClientError as e:
        if is_retryable(e) or error_code(e) in ACCESS_CODES:
            raise
        return [f"{thing}: cannot compare: {error_code(e)}"]


def device_loss(aws: AwsClients, source: str, target: str, thing: str, as_of: float) -> DeviceLoss:
    """The source writes up to `as_of` that the target lacks, over every shadow of a thing."""
    loss = DeviceLoss()
    try:
        for name, merge in compared_shadows(aws, source, target, thing):
            lost = lost_writes(merge.stale, as_of)
            if not lost:
                continue
            oldest = min(s.source_timestamp for s in lost if s.source_timestamp is not None)
            loss.oldest = oldest if loss.oldest is None else min(loss.oldest, oldest)
            loss.leaves += len(lost)
            loss.detail = loss.detail or f"{label(thing, name)}: {len(lost)} leaves lost ({lost[0].path} ...)"
        return loss
    except ClientError as e:
        if is_retryable(e) or error_code(e) in ACCESS_CODES:
            raise
        return DeviceLoss(detail=f"{thing}: cannot compare: {error_code(e)}", unreadable=True)
