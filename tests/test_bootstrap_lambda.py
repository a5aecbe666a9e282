"""The bootstrap service as deployed in AWS: its own credentials, configured device endpoints, and a
Lambda package whose imports need no temporalio."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
from activities.context import Deployments
from bootstrap import lambda_handler
from bootstrap.runtime import endpoints_from_env
from bootstrap.service import BootstrapService
from core.config import ConfigError, DeploymentConfig
from rehearsal import pki
from tests.bootstrap_support import assumed_roles, cold_lambda, register_thing, sample, write_config
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"
ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "deploy" / "aws" / "bootstrap-requirements.txt"


def _regions(emulators: dict[str, str], **extra: str) -> dict[str, dict]:
    """Both regions as the docs deploy them: the controller's role_arn and external ID in each. The
    role is in the account the function runs in (moto's default one), as in AWS."""
    return {
        region: {
            "role": role,
            "endpoint_url": emulators[region],
            "role_arn": "arn:aws:iam::123456789012:role/iotfailover/t/controller",
            "external_id": "fleet-secret",
            **{k: v.format(region=region) for k, v in extra.items()},
        }
        for region, role in ((EAST, "primary"), (WEST, "standby"))
    }


@pytest.fixture
def aws_config(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    regions = _regions(emulators, iot_endpoint="abc123-ats.iot.{region}.amazonaws.com")
    cfg = make_config(emulators, ca_file, regions=regions)
    d = Deployments([cfg])  # the controller: it assumes the regions' roles, as it should
    BootstrapActivities(d).flip_bootstrap(FlipBootstrapInput(cfg.name, 3, WEST, [WEST, EAST]))
    register_thing(d.aws(cfg.name), "sensor-own-creds")
    return cfg


def test_service_reads_its_region_with_its_own_credentials(
    aws_config: DeploymentConfig,
    emulators: dict[str, str],
    local_ca: pki.LocalCA,
    tmp_path: Path,
    monkeypatch,
) -> None:
    """role_arn is the controller's role: the Lambda's role may not assume it, so the service never asks."""
    before = {r: assumed_roles(url) for r, url in emulators.items()}
    discovered = [
        sample("iotfailover_aws_calls_total", region=r, api="DescribeEndpoint", outcome="ok")
        for r in emulators
    ]
    ans = BootstrapService(aws_config, EAST, cache_ttl=0).answer("sensor-own-creds")
    assert ans.status == 200, ans.body
    assert [e["endpoint"] for e in ans.body["endpoints"]] == [
        "abc123-ats.iot.us-west-2.amazonaws.com",
        "abc123-ats.iot.us-east-1.amazonaws.com",
    ]

    cold_lambda(monkeypatch, aws_config, tmp_path, WEST)
    cert, _ = pki.issue_device_cert(local_ca, "sensor-own-creds")
    resp = lambda_handler.handler(_event("sensor-own-creds", cert))
    assert resp["statusCode"] == 200, resp["body"]
    assert lambda_handler.handler({"rawPath": "/healthz"})["statusCode"] == 200
    assert {r: assumed_roles(url) for r, url in emulators.items()} == before  # no AssumeRole anywhere
    assert discovered == [
        sample("iotfailover_aws_calls_total", region=r, api="DescribeEndpoint", outcome="ok")
        for r in emulators
    ], "the device endpoints come from the config, never from DescribeEndpoint"


def test_service_refuses_to_start_without_every_device_endpoint(
    emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    cfg = make_config(emulators, ca_file, regions=_regions(emulators))
    bad = sample("iotfailover_bad_input_total", source="config", reason="iot_endpoint")
    with pytest.raises(ConfigError) as e:
        BootstrapService(cfg, EAST)
    assert [p.split(":")[0] for p in e.value.problems] == [
        f"regions.{EAST}.iot_endpoint",
        f"regions.{WEST}.iot_endpoint",
    ]
    assert "describe-endpoint" in e.value.problems[0] and "IOTFAILOVER_IOT_ENDPOINTS" in e.value.problems[0]
    assert sample("iotfailover_bad_input_total", source="config", reason="iot_endpoint") == bad + 2

    env = {
        "IOTFAILOVER_IOT_ENDPOINTS": f"{EAST}=e-ats.iot.{EAST}.amazonaws.com, {WEST}=w-ats.iot.{WEST}.amazonaws.com"
    }
    svc = BootstrapService(cfg, EAST, endpoints=endpoints_from_env(env))
    assert svc.endpoints == {EAST: f"e-ats.iot.{EAST}.amazonaws.com", WEST: f"w-ats.iot.{WEST}.amazonaws.com"}

    with pytest.raises(ConfigError, match="not a host name"):
        BootstrapService(cfg, EAST, endpoints={EAST: "https://e.example.com/", WEST: "w.example.com"})
    with pytest.raises(ConfigError, match="mars-1 is not a region of"):
        BootstrapService(
            cfg, EAST, endpoints=endpoints_from_env({"IOTFAILOVER_IOT_ENDPOINTS": "mars-1=x.io"})
        )
    with pytest.raises(ConfigError, match="region=host"):
        endpoints_from_env({"IOTFAILOVER_IOT_ENDPOINTS": "x.example.com"})


# A fresh interpreter that can import only what the Lambda package holds: the project and the
# distributions of bootstrap-requirements.txt (with their dependencies); anything else, temporalio
# first, fails to import as it would in the function.
_AS_PACKAGED = """
import importlib.abc, json, os, sys

BLOCKED = set(json.loads(os.environ["BLOCKED_MODULES"]))

class NotPackaged(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the Lambda package)")
        return None

sys.meta_path.insert(0, NotPackaged())
from bootstrap import lambda_handler

event = {"rawPath": "/v1/bootstrap/sensor-own-creds", "pathParameters": {"thingName": "sensor-own-creds"}}
resp = lambda_handler.handler(event)
print(json.dumps({"status": resp["statusCode"], "body": resp["body"]}))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """The distributions `names` install, with their dependencies (extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _requirements() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return {_canonical(r.name): r for r in map(Requirement, filter(None, lines))}


def test_lambda_handler_answers_with_only_what_its_package_installs(
    aws_config: DeploymentConfig, tmp_path: Path
) -> None:
    packaged = _closure(set(_requirements())) | {"iot-failover"}
    blocked = {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(_canonical(d) in packaged for d in dists)
    }
    assert {"temporalio", "aiohttp"} <= blocked
    env = {
        **os.environ,
        "BLOCKED_MODULES": json.dumps(sorted(blocked)),
        "IOTFAILOVER_CONFIG": str(write_config(aws_config, tmp_path / "deployment.toml")),
        "AWS_REGION": EAST,
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _AS_PACKAGED],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["status"] == 200, out["body"]
    assert json.loads(out["body"])["epoch"] == 3


def test_lambda_requirements_pin_what_the_worker_runs_and_all_it_needs() -> None:
    """The Lambda installs the locked versions, so the package and the worker agree, and every
    dependency of what it installs is pinned too (nothing resolved at build time)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {_canonical(r.name): r.specifier for r in map(Requirement, project)}
    locked = dict(
        re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", (ROOT / "requirements/runtime.lock").read_text(), re.M)
    )
    requirements = _requirements()
    for name, req in requirements.items():
        (pin,) = [s for s in req.specifier if s.operator == "=="] or [None]
        assert pin is not None and pin.version == locked[name], (
            f"{name}: {req.specifier}, locked {locked[name]}"
        )
        if name in ranges:
            assert pin.version in ranges[name], f"{name} {pin.version} outside the project's {ranges[name]}"
    assert _closure(set(requirements)) == set(requirements)


def _event(thing: str, cert_pem: str) -> dict:
    return {
        "rawPath": f"/v1/bootstrap/{thing}",
        "pathParameters": {"thingName": thing},
        "requestContext": {"authentication": {"clientCert": {"clientCertPem": cert_pem}}},
    }
