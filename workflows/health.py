"""RegionHealthWorkflow `health-<deployment>-<region>`: probe, score, hysteresis, tell the deployment.

Every interval (or at once on `probe_now`) it runs the region's probes concurrently, scores them
(core.health_scoring.score_region) and settles the reported state with hysteresis (`settle`), then
signals DeploymentWorkflow.region_health only when the reported state changes.

Hysteresis, so one blip never moves a fleet and a flapping region never moves it twice:
- Unhealthy after `unhealthy_after` consecutive Unhealthy checks.
- Healthy after `healthy_after` consecutive Healthy checks; when starting (Unknown), at the first
  Healthy check, so a deployment learns its standbys are usable without waiting.
- Degraded is not reported at once either: from Healthy after `unhealthy_after` not-Healthy checks
  among the last `unhealthy_after + healthy_after` (so a region flapping bad/good shows Degraded,
  once, and triggers nothing); from Unhealthy after `healthy_after` consecutive checks that are not
  Unhealthy but not all Healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.health import HealthProbes, ProbeInput
    from core.health_scoring import ProbeResult, score_region
    from core.models import (
        DEGRADED,
        HEALTHY,
        SETTLED_STATES,
        UNHEALTHY,
        UNKNOWN,
        HealthState,
        RegionHealthChange,
    )
    from core.temporal import SA_DEPLOYMENT
    from workflows.deployment import DeploymentWorkflow
    from workflows.health_types import (
        HealthCheck,
        HealthHistory,
        ProbeSummary,
        RegionHealthInput,
        RegionHealthView,
    )

Probe = Callable[[HealthProbes, ProbeInput], ProbeResult]
PROBES: tuple[Probe, ...] = (
    HealthProbes.probe_control_plane,
    HealthProbes.probe_data_plane,
    HealthProbes.probe_bootstrap,
    HealthProbes.probe_heartbeats,
    HealthProbes.probe_cloudwatch,
)
STATE_GAUGE = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def settle(reported: str, recent: list[str], unhealthy_after: int, healthy_after: int) -> tuple[str, int]:
    """The state to report after the raw assessments `recent` (newest last), and how many checks
    in a row support it (for Degraded: checks that were not Healthy). Pure: tested directly."""

    def trailing(match: Callable[[str], bool]) -> int:
        n = 0
        for s in reversed(recent):
            if not match(s):
                break
            n += 1
        return n

    bad, good, not_good = (
        trailing(lambda s: s == UNHEALTHY),
        trailing(lambda s: s == HEALTHY),
        trailing(lambda s: s != HEALTHY),
    )
    if bad >= unhealthy_after:
        return UNHEALTHY, bad
    if good >= healthy_after or (reported == UNKNOWN and good >= 1):
        return HEALTHY, good
    if reported == UNHEALTHY:
        recovering = trailing(lambda s: s != UNHEALTHY) >= healthy_after
        return (DEGRADED, not_good) if recovering else (UNHEALTHY, bad)
    window = recent[-(unhealthy_after + healthy_after) :]
    if reported in (HEALTHY, UNKNOWN) and sum(1 for s in window if s != HEALTHY) >= unhealthy_after:
        return DEGRADED, not_good
    return reported, {HEALTHY: good, DEGRADED: not_good}.get(reported, 0)


def _settled(state: str) -> HealthState | None:
    """`state` as a HealthState; None for Unknown, which is never reported."""
    return next((s for s in SETTLED_STATES if s == state), None)


@workflow.defn
class RegionHealthWorkflow:
    @workflow.init
    def __init__(self, inp: RegionHealthInput) -> None:
        self._inp = inp
        self._probe_now = False

    @workflow.run
    async def run(self, inp: RegionHealthInput) -> None:
        workflow.upsert_search_attributes([SA_DEPLOYMENT.value_set(inp.deployment)])
        for _ in range(inp.checks_per_run):
            await self._check()
            if workflow.info().is_continue_as_new_suggested():
                break
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._probe_now, timeout=timedelta(seconds=inp.policy.interval_seconds)
                )
            self._probe_now = False
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(replace(inp, state=inp.state))

    async def _check(self) -> None:
        """One round: probe, score, settle, tell the deployment on a change; the check counts
        once everything, the signal included, is done (what `state` shows is settled)."""
        inp = self._inp
        st, policy = inp.state, inp.policy
        results = await asyncio.gather(*(self._probe(probe) for probe in PROBES))
        assessment = score_region(list(results), policy)
        st.recent = [*st.recent, assessment.state][-(policy.unhealthy_after + policy.healthy_after) :]
        state, consecutive = settle(st.reported, st.recent, policy.unhealthy_after, policy.healthy_after)
        changed, now = state != st.reported, workflow.now()
        if changed:
            st.reported, st.since, st.consecutive = state, now, consecutive
            workflow.logger.info("region %s is now %s: %s", inp.region, state, "; ".join(assessment.reasons))
        probes = [
            ProbeSummary(r.probe, assessment.statuses.get(r.probe, r.status), r.value, r.detail)
            for r in results
        ]
        check = HealthCheck(
            at=now,
            assessed=assessment.state,
            reported=state,
            score=assessment.score,
            reasons=assessment.reasons,
            probes=probes,
        )
        if changed or st.unsent:
            await self._tell_deployment(check)
        st.checks += 1
        st.history = [*st.history, check][-inp.history_size :]
        self._record_metrics(check)
        workflow.set_current_details(self._details())

    async def _probe(self, probe: Probe) -> ProbeResult:
        inp = self._inp
        policy = inp.policy
        try:
            return await workflow.execute_activity_method(
                probe,
                ProbeInput(deployment=inp.deployment, region=inp.region, policy=policy),
                start_to_close_timeout=timedelta(seconds=policy.probe_timeout_seconds),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as e:  # a probe that timed out or broke is a failed probe, not an error
            cause = e.cause or e
            name = probe.__name__.removeprefix("probe_")
            return ProbeResult(name, "failed", None, f"{type(cause).__name__}: {cause}"[:200])

    async def _tell_deployment(self, check: HealthCheck) -> None:
        inp = self._inp
        st = inp.state
        state = _settled(st.reported)
        if not inp.deployment_workflow_id or state is None:  # (a settled state is all it reports)
            return
        change = RegionHealthChange(
            region=inp.region,
            state=state,
            score=check.score,
            reasons=check.reasons,
            at=check.at,
            consecutive=st.consecutive,
        )
        try:
            handle = workflow.get_external_workflow_handle(inp.deployment_workflow_id)
            await handle.signal(DeploymentWorkflow.region_health, change)
            st.unsent, st.signal_error = False, ""
        except ApplicationError as e:  # e.g. the DeploymentWorkflow is not running (yet): retry next check
            st.unsent, st.signal_error = True, str(e)[:200]
            workflow.logger.warning("could not signal %s: %s", inp.deployment_workflow_id, e)

    def _record_metrics(self, check: HealthCheck) -> None:
        inp = self._inp
        meter = workflow.metric_meter().with_additional_attributes(
            {"deployment": inp.deployment, "region": inp.region}
        )
        if check.reported in STATE_GAUGE:
            meter.create_gauge(
                "iotfailover_region_health_state",
                "Reported region health: 0 Healthy, 1 Degraded, 2 Unhealthy",
            ).set(STATE_GAUGE[check.reported])
        meter.create_gauge_float("iotfailover_region_health_score", "Latest region health score, 0..1").set(
            check.score
        )

    def _details(self) -> str:
        inp = self._inp
        st = inp.state
        lines = [
            f"**{inp.region}: {st.reported}** since {st.since:%H:%M:%S} UTC, check {st.checks}"
            if st.since
            else f"**{inp.region}: {st.reported}**, check {st.checks}",
        ]
        if st.unsent:
            lines.append(f"not delivered to {inp.deployment_workflow_id}: {st.signal_error}")
        names = [p.probe for p in st.history[-1].probes] if st.history else []
        lines += ["", "| time | assessed | reported | score | " + " | ".join(names) + " |"]
        lines.append("|---" * (4 + len(names)) + "|")
        for c in reversed(st.history[-5:]):
            cells = [p.brief().removeprefix(p.probe + " ") for p in c.probes]
            lines.append(
                f"| {c.at:%H:%M:%S} | {c.assessed} | {c.reported} | {c.score:.2f} | "
                + " | ".join(cells)
                + " |"
            )
        return "\n".join(lines)

    @workflow.signal(description="Run the probes now instead of waiting for the next interval")
    def probe_now(self) -> None:
        self._probe_now = True

    @workflow.query(description="The region's reported health and its latest check")
    def state(self) -> RegionHealthView:
        inp = self._inp
        st = inp.state
        return RegionHealthView(
            deployment=inp.deployment,
            region=inp.region,
            state=st.reported,
            since=st.since,
            consecutive=st.consecutive,
            checks=st.checks,
            last=st.history[-1] if st.history else None,
            deployment_workflow_id=inp.deployment_workflow_id,
            unsent=st.unsent,
            signal_error=st.signal_error,
        )

    @workflow.query(description="The most recent checks, newest last")
    def history(self) -> HealthHistory:
        return HealthHistory(list(self._inp.state.history))
