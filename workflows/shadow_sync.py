"""ShadowSyncWorkflow: carry device shadows (classic and named) from one region into another.

Used one-shot by the cutover (before the flip, and after it to pick up late writes), periodically
by active/active deployments, and to reconcile a region that failed and came back. The runbook:
list the scope in chunks; a scope that fits one chunk is synced here, one activity per page of
things; a larger scope fans out one child workflow per chunk, a bounded window of them at once,
and this workflow continues-as-new after `chunks_per_run` chunks. A periodic sync continues-as-new
after every round. History grows with pages and chunks, never with things.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from activities.shadows import (
        ShadowActivities,
        ShadowPageInput,
        ShadowSyncResult,
        ThingPageInput,
    )
    from core.temporal import SA_DEPLOYMENT, SA_MODE, SA_PHASE, SA_SOURCE, SA_TARGET

__all__ = [
    "ShadowSyncInput",
    "ShadowSyncProgress",
    "ShadowSyncResult",
    "ShadowSyncWorkflow",
]

# programming errors that no retry fixes: fail the workflow instead of retrying forever
_BUGS = ["TypeError", "KeyError", "AttributeError", "ValueError", "ValidationError", "NameError"]


@dataclass
class ShadowSyncState:
    """Where a sync is, carried across continue-as-new."""

    round: int = 1
    token: str | None = None  # listing position (thing group or fleet scope)
    offset: int = 0  # position in an explicit list of things
    chunks: int = 0  # chunks started in this round
    listed: bool = False  # the scope's first listing is done
    totals: ShadowSyncResult = field(default_factory=ShadowSyncResult)
    last_round: ShadowSyncResult | None = None  # periodic: the previous round's result


@dataclass
class ShadowSyncInput:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None  # scope: a thing group (with subgroups) ...
    things: list[str] | None = None  # ... or these things; neither: every thing in the source region
    mode: Literal["one-shot", "periodic"] = "one-shot"
    interval_seconds: float = 300  # periodic: pause between rounds
    page_size: int = 100  # things per sync activity
    concurrency: int = 8  # things synced at once inside one activity
    pages_in_flight: int = 2  # sync activities at once per workflow
    things_per_child: int = 2000  # a larger scope fans out one child workflow per this many things
    children_in_flight: int = 2  # shadows in flight: children x pages_in_flight x concurrency (32)
    chunks_per_run: int = 20  # continue-as-new after starting this many children
    retry_max_interval_seconds: float = 30  # activity retries back off up to this (outages)
    heartbeat_timeout_seconds: float = 60
    resume: ShadowSyncState | None = None  # set by the workflow itself when it continues-as-new


@dataclass
class ShadowSyncProgress:
    """What the `progress` query answers."""

    round: int
    phase: str
    totals: ShadowSyncResult
    pages_done: int
    pages_running: int
    children_done: int
    children_running: int
    last_round: ShadowSyncResult | None


class _Window:
    """At most `size` tasks running at once; the first failure is raised to the workflow."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.tasks: list[asyncio.Task] = []

    def running(self) -> int:
        return sum(not t.done() for t in self.tasks)

    def _failed(self) -> BaseException | None:
        return next(
            (t.exception() for t in self.tasks if t.done() and not t.cancelled() and t.exception()), None
        )

    async def submit(self, work: Awaitable) -> None:
        await workflow.wait_condition(lambda: self.running() < self.size or self._failed() is not None)
        if (error := self._failed()) is not None:
            raise error
        self.tasks.append(asyncio.ensure_future(work))

    async def drain(self) -> None:
        await asyncio.gather(*self.tasks)
        self.tasks = []


@workflow.defn
class ShadowSyncWorkflow:
    def __init__(self) -> None:
        self._inp: ShadowSyncInput | None = None
        self._state = ShadowSyncState()
        self._phase = "starting"
        self._pages = _Window(1)
        self._children = _Window(1)
        self._pages_done = 0
        self._children_done = 0

    @workflow.run
    async def run(self, inp: ShadowSyncInput) -> ShadowSyncResult:
        self._inp, self._state = inp, inp.resume or ShadowSyncState()
        self._pages, self._children = _Window(inp.pages_in_flight), _Window(inp.children_in_flight)
        self._set_phase("syncing")
        await self._sync_round()
        if inp.mode == "one-shot":
            self._set_phase("done")
            return self._state.totals
        self._set_phase("waiting")
        await workflow.sleep(timedelta(seconds=inp.interval_seconds))
        await workflow.wait_condition(workflow.all_handlers_finished)
        next_round = ShadowSyncState(round=self._state.round + 1, last_round=self._state.totals)
        workflow.continue_as_new(replace(inp, resume=next_round))

    @workflow.query(description="Counts so far (things, copied, merged, unchanged, failed, stale leaves)")
    def progress(self) -> ShadowSyncProgress:
        return ShadowSyncProgress(
            round=self._state.round,
            phase=self._phase,
            totals=self._state.totals,
            pages_done=self._pages_done,
            pages_running=self._pages.running(),
            children_done=self._children_done,
            children_running=self._children.running(),
            last_round=self._state.last_round,
        )

    # ---- phases --------------------------------------------------------------------------
    async def _sync_round(self) -> None:
        """Chunk the scope: one chunk is synced here, more fan out to children."""
        inp, st = self._inp, self._state
        assert inp is not None
        buffer: list[str] = []
        started_this_run = 0
        while True:
            if not buffer:
                buffer, more = await self._next_listing()
            else:
                more = bool(st.token) or st.offset < len(inp.things or [])
            chunk, buffer = buffer[: inp.things_per_child], buffer[inp.things_per_child :]
            if st.chunks == 0 and not buffer and not more:
                st.chunks = 1
                await self._sync_here(chunk)
                return
            if chunk:
                await self._children.submit(self._child(chunk, st.chunks))
                st.chunks += 1
                started_this_run += 1
            if not buffer and not more:
                break
            if not buffer and (
                started_this_run >= inp.chunks_per_run or workflow.info().is_continue_as_new_suggested()
            ):
                await self._children.drain()
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(replace(inp, resume=st))
        await self._children.drain()

    async def _next_listing(self) -> tuple[list[str], bool]:
        """The next things of the scope, and whether more follow."""
        inp, st = self._inp, self._state
        assert inp is not None
        if inp.things is not None:
            chunk = inp.things[st.offset : st.offset + inp.things_per_child]
            st.offset += len(chunk)
            return chunk, st.offset < len(inp.things)
        if st.listed and not st.token:
            return [], False
        page = await workflow.execute_activity_method(
            ShadowActivities.list_shadow_things,
            ThingPageInput(
                deployment=inp.deployment,
                region=inp.source,
                thing_group=inp.thing_group,
                token=st.token,
                limit=inp.things_per_child,
            ),
            **self._activity_options(),
        )
        st.token, st.listed = page.next_token, True
        return page.things, bool(page.next_token)

    async def _sync_here(self, things: list[str]) -> None:
        inp = self._inp
        assert inp is not None
        for start in range(0, len(things), inp.page_size):
            await self._pages.submit(self._page(things[start : start + inp.page_size]))
        await self._pages.drain()

    async def _page(self, things: list[str]) -> None:
        inp = self._inp
        assert inp is not None
        result = await workflow.execute_activity_method(
            ShadowActivities.sync_shadow_page,
            ShadowPageInput(
                deployment=inp.deployment,
                source=inp.source,
                target=inp.target,
                things=things,
                concurrency=inp.concurrency,
            ),
            **self._activity_options(),
        )
        self._state.totals.add(result)
        self._pages_done += 1
        self._show()

    async def _child(self, things: list[str], index: int) -> None:
        inp = self._inp
        assert inp is not None
        child_input = replace(
            inp, things=things, thing_group=None, mode="one-shot", things_per_child=len(things), resume=None
        )
        result = await workflow.execute_child_workflow(
            ShadowSyncWorkflow.run,
            child_input,
            id=f"{workflow.info().workflow_id}-r{self._state.round}-c{index}",
            search_attributes=self._search_attributes("syncing"),
            static_summary=f"shadows of {len(things)} things, chunk {index} of round {self._state.round}",
        )
        self._state.totals.add(result)
        self._children_done += 1
        self._show()

    # ---- helpers -------------------------------------------------------------------------
    def _activity_options(self) -> dict:
        inp = self._inp
        assert inp is not None
        return {
            "start_to_close_timeout": timedelta(minutes=30),
            "heartbeat_timeout": timedelta(seconds=inp.heartbeat_timeout_seconds),
            "retry_policy": RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2,
                maximum_interval=timedelta(seconds=inp.retry_max_interval_seconds),
                non_retryable_error_types=_BUGS,
            ),
        }

    def _search_attributes(self, phase: str) -> TypedSearchAttributes:
        inp = self._inp
        assert inp is not None
        values = {
            SA_DEPLOYMENT: inp.deployment,
            SA_SOURCE: inp.source,
            SA_TARGET: inp.target,
            SA_MODE: inp.mode,
            SA_PHASE: phase,
        }
        return TypedSearchAttributes([SearchAttributePair(k, v) for k, v in values.items()])

    def _set_phase(self, phase: str) -> None:
        """Phase changes are few (syncing, waiting, done): each is one search-attribute event."""
        self._phase = phase
        if workflow.info().parent is None:
            workflow.upsert_search_attributes(
                [p.key.value_set(p.value) for p in self._search_attributes(phase)]
            )
        self._show()

    def _show(self) -> None:
        inp, st, t = self._inp, self._state, self._state.totals
        assert inp is not None
        scope = (
            f"group `{inp.thing_group}`"
            if inp.thing_group
            else (f"{len(inp.things)} listed things" if inp.things is not None else "every thing")
        )
        workflow.set_current_details(
            f"**Shadow sync** {inp.source} → {inp.target}, {scope}, {inp.mode} (round {st.round})\n\n"
            f"phase **{self._phase}** · things {t.things_scanned} · copied {t.shadows_copied} · "
            f"merged {t.merged} · unchanged {t.unchanged} · failed {t.failed} · "
            f"stale leaves {t.stale_leaves} · version conflicts {t.conflicts}\n\n"
            f"pages {self._pages_done} done, {self._pages.running()} running · "
            f"children {self._children_done} done, {self._children.running()} running"
            + (f"\n\nfailures: {'; '.join(t.failures[:5])}" if t.failures else "")
        )
