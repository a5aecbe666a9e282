"""DeploymentWorkflow's bootstrap answers: the epoch adopted at start, the first answer, and the
catch-up of regions that missed a flip (they were unreachable), retried until every region agrees.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

# not passed through: imported into the sandbox with the activity types their calls decode
from workflows.deployment_state import RETRY, BootstrapView, DeploymentEntity, RegionView

with workflow.unsafe.imports_passed_through():
    from activities.bootstrap import (
        BootstrapActivities,
        CatchUpBootstrapInput,
        FlipBootstrapInput,
        ReadBootstrapInput,
        ReadFencesInput,
    )
    from core.bootstrap_records import DEFAULT_SCOPE, GROUP_PREFIX, ROUTING_PREFIX
    from core.models import UNHEALTHY
    from workflows.cutover_steps import bootstrap_order
    from workflows.versions import ADOPT_HIGHEST_EPOCH

CATCH_UP_BACKOFF_FIRST = timedelta(seconds=20)  # then doubling, up to the max
CATCH_UP_BACKOFF_MAX = timedelta(minutes=15)


class BootstrapAnswers(DeploymentEntity):
    async def _initialize(self) -> None:
        """Adopt the highest epoch of every fence in every region, or write the first answer."""
        if not workflow.patched(ADOPT_HIGHEST_EPOCH):
            return await self._initialize_from_default_scope()
        while True:  # no epoch, no cutover: keep asking until a region answers
            try:
                fences = await workflow.execute_activity_method(
                    BootstrapActivities.read_fences,
                    ReadFencesInput(deployment=self.cfg.name),
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RETRY,
                )
                break
            except ActivityError as e:  # e.g. access denied: shown in status until it is fixed
                self._decide("note", f"cannot read the fences: {e.cause or e}; trying again in a minute")
                self._report()
                await workflow.sleep(timedelta(minutes=1))
        for region in [*fences.unreachable, *fences.lagging]:
            self._missed(region, DEFAULT_SCOPE)
        self.s.epoch = fences.epoch
        for scope, rec in fences.records.items():
            if scope.startswith(ROUTING_PREFIX) or rec.cleared:
                continue
            view = BootstrapView(epoch=rec.epoch, primary=rec.primary, order=rec.order or [rec.primary])
            self.s.bootstrap[scope] = view
            if scope == DEFAULT_SCOPE:
                self.s.active_region = view.primary
        for scope, view in self.s.bootstrap.items():
            if scope != DEFAULT_SCOPE and view.primary != self.s.active_region:
                self.s.homes[scope.removeprefix(GROUP_PREFIX)] = view.primary
        if DEFAULT_SCOPE in self.s.bootstrap:
            self._decide(
                "note",
                f"adopted epoch {self.s.epoch} (the highest fence), active region {self.s.active_region}",
            )
        else:
            self.s.epoch += 1
            first = self._first_answer(self.s.epoch)
            await self._write_bootstrap(DEFAULT_SCOPE, first)
            self._decide("note", f"first bootstrap answer written: {first.primary} (epoch {first.epoch})")
        self.s.initialized = True

    async def _initialize_from_default_scope(self) -> None:
        """Before ADOPT_HIGHEST_EPOCH: the epoch of the `default` scope only."""
        epochs = []
        for region in self.cfg.regions:
            try:
                rec = await workflow.execute_activity(  # a legacy result: see _as_recorded
                    _as_recorded(BootstrapActivities.read_bootstrap),
                    ReadBootstrapInput(deployment=self.cfg.name, region=region, scope=DEFAULT_SCOPE),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
            except Exception:  # an unreachable region is caught up later
                self._missed(region, DEFAULT_SCOPE)
                continue
            if rec:
                epochs.append(int(rec["epoch"]))
                self.s.bootstrap[DEFAULT_SCOPE] = BootstrapView(
                    epoch=int(rec["epoch"]), primary=rec["primary"], order=list(rec["order"])
                )
                self.s.active_region = rec["primary"]
        if epochs:
            self.s.epoch = max(epochs)
            self._decide("note", f"adopted epoch {self.s.epoch}, active region {self.s.active_region}")
        else:
            self.s.epoch = 1
            await self._write_bootstrap(DEFAULT_SCOPE, self._first_answer(1))
            self._decide("note", f"first bootstrap answer written: {self.s.active_region} (epoch 1)")
        self.s.initialized = True

    def _first_answer(self, epoch: int) -> BootstrapView:
        primary = self.s.active_region
        return BootstrapView(
            epoch=epoch, primary=primary, order=bootstrap_order(self.cfg.region_names, primary)
        )

    async def _write_bootstrap(self, scope: str, view: BootstrapView) -> None:
        result = await workflow.execute_activity_method(
            BootstrapActivities.flip_bootstrap,
            FlipBootstrapInput(
                deployment=self.cfg.name,
                epoch=view.epoch,
                primary=view.primary,
                order=view.order,
                scope=scope,
                reason="deployment",
            ),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RETRY,
        )
        self.s.bootstrap[scope] = view
        for region in result.unreachable:
            self._missed(region, scope)

    def _catch_up_due(self) -> bool:
        if self._catching_up is not None and not self._catching_up.done():
            return False
        now = workflow.now()
        return any(
            missed
            and self.s.health.get(r, RegionView()).state != UNHEALTHY
            and self.s.catch_up_after.get(r, now) <= now
            for r, missed in self.s.catch_up.items()
        )

    async def _catch_up(self) -> None:
        """Copy the newest bootstrap and routing records into every region that missed some, until
        every region agrees; a failed try is retried with a growing pause (shown in `status`)."""
        now = workflow.now()
        for region, missed in list(self.s.catch_up.items()):
            if not missed or self.s.health.get(region, RegionView()).state == UNHEALTHY:
                continue
            if self.s.catch_up_after.get(region, now) > now:
                continue
            pending = list(missed)
            try:
                result = await workflow.execute_activity_method(
                    BootstrapActivities.catch_up_bootstrap,
                    CatchUpBootstrapInput(deployment=self.cfg.name, region=region),
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=2),
                )
            except ActivityError as e:
                failures = self.s.catch_up_failures.get(region, 0) + 1
                self.s.catch_up_failures[region] = failures
                pause = min(CATCH_UP_BACKOFF_MAX, CATCH_UP_BACKOFF_FIRST * 2 ** min(failures - 1, 6))
                self.s.catch_up_after[region] = workflow.now() + pause
                self._decide("note", f"{region}: catch-up failed ({e.cause or e}); next try in {pause}")
                continue
            left = [x for x in self.s.catch_up.get(region, []) if x not in pending]  # missed meanwhile
            if left:
                self.s.catch_up[region] = left
            else:
                self.s.catch_up.pop(region, None)
            self.s.catch_up_failures.pop(region, None)
            self.s.catch_up_after.pop(region, None)
            self._decide(
                "catch-up",
                f"{region}: caught up ({', '.join(pending)}; {len(result.written)} records written)",
            )
        self._report()

    async def _catch_up_inline(self, region: str) -> None:
        """Before LOOP_WATCHES_CUTOVER: the catch-up ran in the health signal handler."""
        try:
            result = await workflow.execute_activity(  # a legacy result: see _as_recorded
                _as_recorded(BootstrapActivities.catch_up_bootstrap),
                CatchUpBootstrapInput(deployment=self.cfg.name, region=region),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except Exception as e:  # stays pending; retried on the next healthy report
            self._decide("note", f"{region}: bootstrap catch-up failed, will retry: {e}")
            return
        missed = self.s.catch_up.pop(region, [])
        self._decide(
            "catch-up",
            f"{region}: bootstrap caught up ({', '.join(missed)}; "
            f"{len(result.get('written', []))} records written)",
        )


def _as_recorded(activity: Callable[..., Any]) -> str:
    """The activity's name, for the paths taken only by histories recorded before a patch: their
    results are the plain JSON the activity returned then (a bootstrap record without `scope`), which
    today's result type would refuse; called by name they decode as the dict they were."""
    return activity.__name__
