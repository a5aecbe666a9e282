"""Patch IDs: every change to what a running workflow does, in one place.

A workflow replays its history on every worker that picks it up, so a changed workflow must issue
the same commands as the history recorded before the change. Each behaviour change that alters the
commands is taken only where `workflow.patched(<id>)` says so: True for new executions (the marker
is recorded), False while replaying a history recorded before the change. A patch is checked at the
point where the old and the new code part ways, and only when they would, so a running workflow
takes each fix from the next decision it makes after the upgrade.

tests/test_replay.py replays the histories recorded from each release (tests/histories/) against
the code. When no workflow recorded before a patch can still be running (a cutover lasts hours, the
long-lived entities continue-as-new within days), its check becomes `workflow.deprecate_patch(<id>)`
and the old branch goes; a release later the call goes too (docs/operating.md, "Upgrading").
"""

from __future__ import annotations

# ---- CutoverWorkflow --------------------------------------------------------------------------
# A started flip runs to its end and counts as applied, whatever arrives meanwhile (abort): the
# compensation then flips back. Before: an abort cancelled the flip, which still landed, and the
# compensation skipped the flip back (two primaries).
FLIPS_RUN_TO_THE_END = "flips-run-to-the-end"
# Only a whole-fleet cutover moves telemetry routing and DNS; a group cutover flipped both.
ROUTE_WHOLE_FLEET_ONLY = "route-whole-fleet-only"
# Devices are rolled back only onto a source known Healthy (before: anything not Unhealthy).
ROLLBACK_ONTO_HEALTHY_ONLY = "rollback-onto-healthy-only"
# Rollback carries the shadows written in the target back to the source (before: lost), and
# removes its rollback group from the region that holds it.
ROLLBACK_SYNCS_SHADOWS = "rollback-syncs-shadows"
# An abort during a shadow sync cancels the sync child (before: the abort waited for the whole sync).
ABORT_CANCELS_SHADOW_SYNC = "abort-cancels-shadow-sync"
# A cancel of the workflow cancels the running step and waits for it (a flip: for its end) before
# the rollback, and the rollback then runs to its end (before: the step's activity was left running
# while the rollback started, and a cancel arriving during the rollback stopped it).
CANCEL_STOPS_THE_STEP = "cancel-stops-the-step"
# The rollback's move back (finding the devices, their wave) is one step like the others: a region
# lost or an activity failing there is recorded and the rollback goes on. Before, it escaped the
# rollback (a region loss failed the workflow task over and over).
MOVE_BACK_IS_A_STEP = "move-back-is-a-step"
# An emergency cutover flips every region not known Unhealthy, the source too when it still answers
# (a flip it cannot reach is reported unreachable and caught up later). Before, it always skipped the
# source, whose bootstrap answer kept naming itself primary beside the target's: split brain until
# the cutover ended (found by the fault campaign, seeds 3 and 13).
EMERGENCY_FLIPS_A_LIVE_SOURCE = "emergency-flips-a-live-source"

# ---- DeploymentWorkflow -----------------------------------------------------------------------
# The epoch is adopted from every fence (every bootstrap scope, routing, DNS) of every region, not
# from the default scope alone.
ADOPT_HIGHEST_EPOCH = "adopt-highest-epoch"
# The entity asks its health monitors for their current state when it starts with regions Unknown.
ASK_HEALTH_AT_START = "ask-health-at-start"
# The main loop watches a running cutover instead of blocking on it, and catches up regions that
# missed flips from the loop (retried every minute until every region agrees), never from a
# signal handler.
LOOP_WATCHES_CUTOVER = "loop-watches-cutover"
# request_cutover checks the refusal rules again under the lock (several updates may pass the
# validator before the first handler runs).
RECHECK_UNDER_LOCK = "recheck-under-lock"
# A run that inherited a cutover in flight without its handle (continued-as-new mid-cutover by an
# older version) waits for that cutover through an activity instead of refusing every cutover.
REATTACH_CUTOVER = "reattach-cutover"
# The entity continues-as-new only when idle: a cutover started while it waited for its handlers
# to finish keeps it in this run (before: the new run inherited the cutover without its handle).
CONTINUE_ONLY_IDLE = "continue-only-idle"

# ---- RegistryReplicationWorkflow --------------------------------------------------------------
# The workflow tells the DeploymentWorkflow whether each target holds a complete copy (signal
# replica_status with a ReplicaReport); only with ReplicationInput.deployment_workflow_id set.
REPLICA_REPORTS = "replica-reports"

# ---- DrillWorkflow ----------------------------------------------------------------------------
# Nothing a drill starts waits without bound: each wait has the drill's timeout_seconds, and a
# cutover of the drill that holds on a failed wave, outlasts it, or is waited on when the drill's
# abort arrives is aborted at once (FAIL with the reason); its cutovers ask approval "none" unless
# DrillInput.approval says otherwise; the recovery point is measured over the scope before anything
# moves (before: parity of the whole region after the outage); the sampled scope group is deleted.
DRILL_BOUNDED = "drill-bounded-waits"
# A cancel of the drill itself that arrives while an activity runs ends the drill cancelled, after
# it restored the fleet (before: caught as a failure, "drill interrupted", and the drill completed).
DRILL_CANCELS = "drill-cancels"
# A region Unhealthy when a cutover starts (its flips skip it) is recorded for catch-up at once, so
# when it comes back during the cutover it is given the cutover's answer then, not when the cutover
# ends (until then it kept naming itself primary: the fault campaign's seed 2).
CATCH_UP_DURING_CUTOVER = "catch-up-during-cutover"
