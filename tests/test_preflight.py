"""`starter.py preflight` against the emulators and the dev server: a region as a new account leaves
it names every missing piece with its fix; once the region is set up as the region stack and the
controller set it up, everything is in place and the command exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

import starter
from activities.bootstrap import BootstrapActivities, EnsureTablesInput
from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities
from cli.preflight import region_checks, temporal_checks
from core.aws import AwsClients
from core.config import DeploymentConfig
from rehearsal.stack import enable_registry_events
from tests.conftest import make_config
from tests.toml_files import deployment_data, write_toml

EAST, WEST = "us-east-1", "us-west-2"


def _set_up_as_the_region_stack_does(cfg: DeploymentConfig) -> None:
    deployments, env = Deployments([cfg]), ActivityEnvironment()
    env.run(BootstrapActivities(deployments).ensure_bootstrap_tables, EnsureTablesInput(cfg.name))
    env.run(RegistryActivities(deployments).ensure_replication_ready, ReadyInput(cfg.name))
    for region in cfg.region_names:
        enable_registry_events(cfg, region)


def test_a_region_like_a_new_account_is_missing_everything_the_controller_needs(
    config: DeploymentConfig,
) -> None:
    checks = {c.what: c for c in region_checks(AwsClients(config), EAST)}
    assert checks["credentials"].ok
    missing = {what for what, c in checks.items() if not c.ok}
    assert missing == {
        f"table {config.bootstrap_table}",
        f"table {config.claims_table}",
        f"table {config.routing_table}",
        f"table {config.replication.ledger_table}",
        f"queue {config.replication.events_queue}",
        f"queue {config.replication.events_queue}-dlq",
        next(w for w in checks if w.startswith("customer CA")),
        "registry event configurations",
    }
    assert all(c.fix for c in checks.values() if not c.ok), "every missing piece says how to fix it"
    assert "off: THING," in checks["registry event configurations"].detail


def test_a_ca_registered_without_auto_registration_is_not_enough(config: DeploymentConfig) -> None:
    _set_up_as_the_region_stack_does(config)
    ca_id = next(c for c in region_checks(AwsClients(config), EAST) if c.what.startswith("customer CA"))
    assert ca_id.ok
    iot = AwsClients(config).iot(EAST)
    (ca,) = [c["certificateId"] for c in iot.list_ca_certificates()["certificates"]]
    iot.update_ca_certificate(certificateId=ca, newAutoRegistrationStatus="DISABLE")
    check = next(c for c in region_checks(AwsClients(config), EAST) if c.what.startswith("customer CA"))
    assert not check.ok and "auto-registration DISABLE" in check.detail


async def test_a_prepared_deployment_passes_end_to_end(
    emulators: dict[str, str], local_ca, tmp_path: Path, temporal_env: WorkflowEnvironment, capsys
) -> None:
    (tmp_path / "ca.pem").write_text(local_ca.cert_pem)
    address = temporal_env.client.service_client.config.target_host
    cfg = make_config(emulators, tmp_path / "ca.pem", temporal={"address": address})
    path = write_toml(tmp_path / "deployment.toml", deployment_data(cfg) | {"temporal": {"address": address}})
    assert await asyncio.to_thread(starter.main, ["--config", str(path), "preflight", "--skip-temporal"]) == 1
    capsys.readouterr()
    _set_up_as_the_region_stack_does(cfg)
    assert [c.render() for c in await temporal_checks(cfg) if not c.ok] == []
    code = await asyncio.to_thread(starter.main, ["--config", str(path), "preflight"])  # its own loop
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MISSING" not in out and "prerequisites in place" in out


def test_a_region_that_cannot_be_reached_is_checked_no_further(config: DeploymentConfig) -> None:
    broken = make_config(
        {EAST: config.regions[EAST].endpoint_url, WEST: "http://127.0.0.1:9"}, config.ca_certificate
    )
    (check,) = region_checks(AwsClients(broken), WEST)
    assert check.what == "credentials" and not check.ok and "role_arn" in check.fix
