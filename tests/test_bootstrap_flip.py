"""Fenced bootstrap flips against the emulators, seen through the service of every region."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.bootstrap import (
    BootstrapActivities,
    CatchUpBootstrapInput,
    ClearBootstrapScopeInput,
    EnsureTablesInput,
    FlipBootstrapInput,
    ReadBootstrapInput,
    ReadFencesInput,
)
from activities.context import Deployments
from activities.routing import FlipRoutingInput, ReadRoutingInput, RoutingActivities
from bootstrap.service import BootstrapService
from core.config import DeploymentConfig
from rehearsal import faults
from tests.bootstrap_support import register_thing, sample, with_device_endpoints

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture
def config(config: DeploymentConfig) -> DeploymentConfig:
    return with_device_endpoints(config)


@pytest.fixture
def acts(config: DeploymentConfig) -> BootstrapActivities:
    return BootstrapActivities(Deployments([config]))


def run(fn, inp):
    return ActivityEnvironment().run(fn, inp)


_services: dict[tuple[str, str], BootstrapService] = {}


def service(cfg: DeploymentConfig, region: str) -> BootstrapService:
    """An uncached service per deployment and region (building boto3 clients is the slow part)."""
    key = (cfg.name, region)
    if key not in _services:
        _services[key] = BootstrapService(cfg, region, cache_ttl=0)
    return _services[key]


def primary_seen(cfg: DeploymentConfig, thing: str) -> dict[str, tuple[int, str]]:
    """(epoch, primary region) that a device gets from each region's service."""
    seen = {}
    for region in cfg.region_names:
        ans = service(cfg, region).answer(thing)
        assert ans.status == 200, ans.body
        primary = [e["region"] for e in ans.body["endpoints"] if e["primary"]]
        assert len(primary) == 1
        seen[region] = (ans.body["epoch"], primary[0])
    return seen


def flip(cfg: DeploymentConfig, epoch: int, primary: str, **kw) -> FlipBootstrapInput:
    return FlipBootstrapInput(deployment=cfg.name, epoch=epoch, primary=primary, order=cfg.region_names, **kw)


def test_ensure_tables_is_idempotent(acts: BootstrapActivities, config: DeploymentConfig) -> None:
    first = run(acts.ensure_bootstrap_tables, EnsureTablesInput(config.name))
    assert sorted(first.created) == sorted(
        f"{r}/{t}" for r in config.region_names for t in (config.bootstrap_table, config.routing_table)
    )
    again = run(acts.ensure_bootstrap_tables, EnsureTablesInput(config.name))
    assert again.created == [] and len(again.existing) == 4


def test_flip_is_visible_in_every_region(acts: BootstrapActivities, config: DeploymentConfig) -> None:
    register_thing(acts.deployments.aws(config.name), "dev-1")
    assert primary_seen(config, "dev-1") == {EAST: (0, EAST), WEST: (0, EAST)}  # never flipped: config
    result = run(acts.flip_bootstrap, flip(config, 1, WEST, reason="drill"))
    assert sorted(result.written) == [EAST, WEST] and result.unreachable == []
    assert primary_seen(config, "dev-1") == {EAST: (1, WEST), WEST: (1, WEST)}
    record = run(acts.read_bootstrap, ReadBootstrapInput(config.name, EAST))
    assert (record.epoch, record.primary, record.order, record.reason) == (1, WEST, [WEST, EAST], "drill")
    # a replay of the same flip (a retry, or a catch-up with another reason) is success, not a refusal
    assert sorted(run(acts.flip_bootstrap, flip(config, 1, WEST, reason="catch-up")).written) == [EAST, WEST]
    assert run(acts.flip_bootstrap, flip(config, 1, WEST, regions=[])).written == []  # nothing left to write


def test_stale_epoch_is_refused_and_counted(acts: BootstrapActivities, config: DeploymentConfig) -> None:
    run(acts.flip_bootstrap, flip(config, 5, WEST))
    before = sample("iotfailover_config_flips_total", kind="bootstrap", region=EAST, outcome="refused")
    for epoch in (4, 5):  # older, and the same epoch with other content
        with pytest.raises(ApplicationError) as e:
            run(acts.flip_bootstrap, flip(config, epoch, EAST))
        assert e.value.type == "StaleEpoch" and e.value.non_retryable
        assert sorted(e.value.details[0]["refused"]) == [EAST, WEST]
    assert (
        sample("iotfailover_config_flips_total", kind="bootstrap", region=EAST, outcome="refused")
        == before + 2
    )
    assert run(acts.read_bootstrap, ReadBootstrapInput(config.name, WEST)).primary == WEST


def test_region_down_during_flip_is_caught_up(acts: BootstrapActivities, config: DeploymentConfig) -> None:
    register_thing(acts.deployments.aws(config.name), "dev-2")
    run(acts.flip_bootstrap, flip(config, 1, EAST))
    west_url = config.regions[WEST].endpoint_url
    faults.set_fault(west_url, "outage")
    result = run(acts.flip_bootstrap, flip(config, 2, WEST))
    assert result.written == [EAST] and result.unreachable == [WEST]
    assert service(config, WEST).answer("dev-2").status == 503
    faults.set_fault(west_url, "clear")
    assert primary_seen(config, "dev-2")[WEST] == (1, EAST)  # back, but behind
    caught_up = run(acts.flip_bootstrap, flip(config, 2, WEST, regions=[WEST]))
    assert caught_up.written == [WEST]
    assert primary_seen(config, "dev-2") == {EAST: (2, WEST), WEST: (2, WEST)}


def test_catch_up_copies_what_a_returning_region_missed(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    register_thing(acts.deployments.aws(config.name), "dev-4", groups=("wave-1",))
    run(acts.flip_bootstrap, flip(config, 1, EAST))
    faults.set_fault(config.regions[WEST].endpoint_url, "outage")
    try:
        run(acts.flip_bootstrap, flip(config, 2, WEST, scope="group:wave-1"))
        run(acts.flip_bootstrap, flip(config, 3, WEST, scope="group:wave-2"))
    finally:
        faults.set_fault(config.regions[WEST].endpoint_url, "clear")
    result = run(acts.catch_up_bootstrap, CatchUpBootstrapInput(config.name, WEST))
    assert result.sources == [EAST] and result.current == ["default"]
    assert result.written == ["group:wave-1", "group:wave-2"] and result.ahead == []
    assert primary_seen(config, "dev-4")[WEST] == (2, WEST)
    again = run(acts.catch_up_bootstrap, CatchUpBootstrapInput(config.name, WEST))
    assert again.written == [] and len(again.current) == 3


def test_rollback_restores_the_previous_answer_under_a_higher_epoch(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    register_thing(acts.deployments.aws(config.name), "dev-3")
    run(acts.flip_bootstrap, flip(config, 1, EAST))
    before = service(config, EAST).answer("dev-3").body
    run(acts.flip_bootstrap, flip(config, 2, WEST))
    run(acts.flip_bootstrap, flip(config, 3, EAST, reason="rollback of epoch 2"))
    after = service(config, EAST).answer("dev-3").body
    layout = lambda body: [(e["region"], e["primary"], e["retry"]) for e in body["endpoints"]]  # noqa: E731
    assert after["epoch"] == 3 and layout(after) == layout(before) == [(EAST, True, 5), (WEST, False, 5)]


def test_scope_override_applies_to_its_group_until_cleared(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    aws = acts.deployments.aws(config.name)
    register_thing(aws, "canary-1", groups=("canary",))
    register_thing(aws, "other-1")
    run(acts.flip_bootstrap, flip(config, 1, EAST))
    run(acts.flip_bootstrap, flip(config, 2, WEST, scope="group:canary"))
    assert primary_seen(config, "canary-1") == {EAST: (2, WEST), WEST: (2, WEST)}
    assert primary_seen(config, "other-1") == {EAST: (1, EAST), WEST: (1, EAST)}
    run(acts.clear_bootstrap_scope, ClearBootstrapScopeInput(config.name, 3, "group:canary", "rolled back"))
    assert primary_seen(config, "canary-1") == {EAST: (3, EAST), WEST: (3, EAST)}  # epoch never goes back
    with pytest.raises(ApplicationError, match="StaleEpoch|refused"):  # the tombstone fences late writes
        run(acts.flip_bootstrap, flip(config, 2, WEST, scope="group:canary"))


def test_newer_default_flip_supersedes_an_older_scope(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    register_thing(acts.deployments.aws(config.name), "canary-2", groups=("canary",))
    run(acts.flip_bootstrap, flip(config, 1, WEST, scope="group:canary"))
    run(acts.flip_bootstrap, flip(config, 2, WEST))
    run(acts.flip_bootstrap, flip(config, 3, EAST, reason="fail back everyone"))
    assert primary_seen(config, "canary-2")[EAST] == (3, EAST)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"primary": "eu-west-9"}, "region"),
        ({"scope": "wave 1"}, "scope"),
        ({"epoch": 0}, "epoch"),
        ({"retry": 0}, "retry"),
    ],
)
def test_bad_flip_input_is_refused_and_counted(
    acts: BootstrapActivities, config: DeploymentConfig, change: dict, reason: str
) -> None:
    inp = flip(config, 1, WEST)
    for k, v in change.items():
        setattr(inp, k, v)
    before = sample("iotfailover_bad_input_total", source="flip_bootstrap", reason=reason)
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_bootstrap, inp)
    assert e.value.non_retryable and e.value.type == "InvalidFlip"
    assert sample("iotfailover_bad_input_total", source="flip_bootstrap", reason=reason) == before + 1


def test_fences_read_the_highest_epoch_of_every_scope_and_routing_and_who_lags(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    """A restarted entity must continue above every fence, not only the default scope's (item 5)."""
    routing = RoutingActivities(acts.deployments)
    run(acts.flip_bootstrap, flip(config, 1, EAST))
    run(acts.flip_bootstrap, flip(config, 6, WEST, scope="group:canary"))
    west = config.regions[WEST].endpoint_url
    faults.set_fault(west, "outage")
    try:
        run(routing.flip_routing, FlipRoutingInput(config.name, 8, "argus", WEST))
    finally:
        faults.set_fault(west, "clear")
    fences = run(acts.read_fences, ReadFencesInput(config.name))
    assert fences.epoch == 8 and fences.unreachable == []
    assert fences.records["default"].primary == EAST and fences.records["default"].order == [EAST, WEST]
    assert fences.records["group:canary"].epoch == 6
    assert fences.records["routing:argus"].primary == WEST
    assert fences.lagging == [WEST]  # it missed the routing flip


def test_catch_up_copies_routing_records_a_region_missed(
    acts: BootstrapActivities, config: DeploymentConfig
) -> None:
    """Telemetry routing is caught up like the bootstrap answers (item 4)."""
    routing = RoutingActivities(acts.deployments)
    run(routing.flip_routing, FlipRoutingInput(config.name, 1, "argus", EAST))
    west = config.regions[WEST].endpoint_url
    faults.set_fault(west, "outage")
    try:
        run(routing.flip_routing, FlipRoutingInput(config.name, 3, "argus", WEST))
    finally:
        faults.set_fault(west, "clear")
    assert run(routing.read_routing, ReadRoutingInput(config.name, WEST, "argus")).epoch == 1
    result = run(acts.catch_up_bootstrap, CatchUpBootstrapInput(config.name, WEST))
    assert result.written == ["routing:argus"]
    assert run(routing.read_routing, ReadRoutingInput(config.name, WEST, "argus")).region == WEST
    assert run(acts.read_fences, ReadFencesInput(config.name)).lagging == []
