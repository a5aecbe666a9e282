"""Helpers shared by the bootstrap tests: things in the emulators and a config file on disk."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bootstrap import lambda_handler
from core.aws import AwsClients
from core.config import DeploymentConfig
from tests.toml_files import deployment_data, write_toml


def register_thing(
    aws: AwsClients,
    name: str,
    regions: list[str] | None = None,
    groups: tuple[str, ...] = (),
    attributes: dict[str, str] | None = None,
) -> None:
    """Create `name` (and its groups) in each region, as registry replication would."""
    for region in regions or aws.cfg.region_names:
        iot = aws.iot(region)
        iot.create_thing(thingName=name, attributePayload={"attributes": attributes or {}})
        for g in groups:
            iot.create_thing_group(thingGroupName=g)
            iot.add_thing_to_thing_group(thingGroupName=g, thingName=name)


def write_config(cfg: DeploymentConfig, path: Path, bootstrap_urls: dict[str, str] | None = None) -> Path:
    """The same deployment as a TOML file, for entry points that take --config."""
    return write_toml(path, deployment_data(cfg, bootstrap_urls))


def cold_lambda(
    monkeypatch: pytest.MonkeyPatch, cfg: DeploymentConfig, folder: Path, region: str, **env: str
) -> None:
    """A fresh Lambda instance of `cfg` in `region`: its environment set, its service not built yet."""
    monkeypatch.setenv("IOTFAILOVER_CONFIG", str(write_config(cfg, folder / "deployment.toml")))
    monkeypatch.setenv("AWS_REGION", region)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_handler, "_service", None)
    # structlog would keep pytest's capture stream for the rest of the session: leave logging as it is
    monkeypatch.setattr(lambda_handler.logs, "configure", lambda **_: None)


def with_device_endpoints(cfg: DeploymentConfig) -> DeploymentConfig:
    """The deployment with every region's device endpoint set, as the bootstrap service needs it."""
    regions = {
        name: r.model_copy(update={"iot_endpoint": f"test-ats.iot.{name}.amazonaws.com"})
        for name, r in cfg.regions.items()
    }
    return cfg.model_copy(update={"regions": regions})


def assumed_roles(emulator_url: str) -> int:
    """How many AssumeRole calls the region's emulator has answered since it started (moto's model data)."""
    with urllib.request.urlopen(f"{emulator_url}/moto-api/data.json", timeout=10) as resp:  # noqa: S310
        return len(json.loads(resp.read()).get("sts", {}).get("AssumedRole", []))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
