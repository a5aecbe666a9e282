"""`fleet provision|run|stop|status` against the real emulators, the simulator as a real process."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

import starter
from core.certs import device_identity
from core.config import DeploymentConfig, load_config
from rehearsal.processes import free_port
from rehearsal.stack import components
from simulator.fleet import read_status
from simulator.provision import NAMED_SHADOW, Provisioner, device_name, fleet_dir
from tests.toml_files import write_toml

EAST, WEST = "us-east-1", "us-west-2"


def _client(service: str, url: str, region: str):
    return boto3.client(
        service, region_name=region, endpoint_url=url, aws_access_key_id="t", aws_secret_access_key="t"
    )


def write_config(tmp_path: Path, emulators: dict[str, str], metrics_port: int = 0) -> Path:
    write_toml(
        tmp_path / "simulator.toml",
        {
            "simulator": {
                "keep_alive_seconds": 0.5,
                "retry_timings_ms": [50],
                "start_spread_seconds": 0,
                "status_interval_seconds": 0.2,
            }
        },
    )
    return write_toml(
        tmp_path / "deployment.toml",
        {
            "deployment": {"name": "simtest", "mode": "active-passive", "ca_certificate": "ca/ca.pem"},
            "regions": {
                EAST: {
                    "role": "primary",
                    "endpoint_url": emulators[EAST],
                    "bootstrap_url": f"http://127.0.0.1:{free_port()}",
                },
                WEST: {"role": "standby", "endpoint_url": emulators[WEST]},
            },
            "fleet": {
                "thing_group": "sim-fleet",
                "policy_name": "sim-policy",
                "thing_type": "sensor",
                "application": "simapp",
            },
            "local": {"state_dir": tmp_path / "state", "simulator_metrics_port": metrics_port or free_port()},
        },
    )


@pytest.fixture
def fleet_config(emulators: dict[str, str], tmp_path: Path) -> tuple[Path, DeploymentConfig]:
    path = write_config(tmp_path, emulators)
    return path, load_config(path, need_ca=False)


def test_provision_creates_the_demo_fleet_in_the_primary_region_idempotently(
    emulators: dict[str, str], fleet_config: tuple[Path, DeploymentConfig]
) -> None:
    _, cfg = fleet_config
    first = Provisioner(cfg, workers=4).run(5, echo=lambda _: None)
    assert (first.region, first.devices, first.created) == (EAST, 5, 5)

    iot, data = _client("iot", emulators[EAST], EAST), _client("iot-data", emulators[EAST], EAST)
    ca_pem = cfg.ca_certificate.read_text()
    assert "PRIVATE" not in ca_pem and (cfg.ca_certificate.parent / "ca.key").exists()
    group = iot.list_things_in_thing_group(thingGroupName="sim-fleet")["things"]
    assert sorted(group) == [device_name(cfg, i) for i in range(1, 6)]
    iot.get_policy(policyName="sim-policy")

    name = device_name(cfg, 2)
    thing = iot.describe_thing(thingName=name)
    assert thing["thingTypeName"] == "sensor"
    assert thing["attributes"] == {"sku": "2563x01189", "application": "simapp"}
    cert_pem = (fleet_dir(cfg) / "certs" / f"{name}.pem").read_text()
    key_file = fleet_dir(cfg) / "certs" / f"{name}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    identity = device_identity(cert_pem)
    assert (identity.device_id, identity.sku) == (name, "2563x01189")
    principals = iot.list_thing_principals(thingName=name)["principals"]
    assert len(principals) == 1
    registered = iot.describe_certificate(certificateId=principals[0].rsplit("/", 1)[-1])
    assert registered["certificateDescription"]["certificatePem"] == cert_pem
    ca = iot.describe_ca_certificate(certificateId=first.ca_certificate_id)["certificateDescription"]
    assert ca["certificatePem"] == ca_pem and ca["status"] == "ACTIVE"
    by_ca = iot.list_certificates_by_ca(caCertificateId=first.ca_certificate_id)["certificates"]
    assert principals[0] in {c["certificateArn"] for c in by_ca}  # registered with the customer CA
    assert [p["policyName"] for p in iot.list_attached_policies(target=principals[0])["policies"]] == [
        "sim-policy"
    ]
    classic = json.loads(data.get_thing_shadow(thingName=name)["payload"].read())
    assert classic["state"]["reported"]["device"]["sku"] == "2563x01189"
    assert data.list_named_shadows_for_thing(thingName=name)["results"] == [NAMED_SHADOW]
    assert _client("iot", emulators[WEST], WEST).list_things()["things"] == []  # primary region only

    again = Provisioner(cfg, workers=4).run(5, echo=lambda _: None)
    assert again.created == 0
    assert (fleet_dir(cfg) / "certs" / f"{name}.pem").read_text() == cert_pem
    grown = Provisioner(cfg, workers=4).run(7, echo=lambda _: None)
    assert grown.created == 2
    manifest = json.loads(grown.manifest.read_text())
    assert [d["id"] for d in manifest["devices"]] == [device_name(cfg, i) for i in range(1, 8)]


def test_the_local_stack_runs_the_fleet_only_once_provisioned(
    fleet_config: tuple[Path, DeploymentConfig],
) -> None:
    path, cfg = fleet_config
    assert "fleet" not in [c.name for c in components(cfg, str(path))]
    (fleet_dir(cfg)).mkdir(parents=True)
    (fleet_dir(cfg) / "manifest.json").write_text('{"devices": []}')
    fleet = components(cfg, str(path))[-1]  # started last by `local up`, stopped first by `local down`
    assert fleet.name == "fleet" and fleet.argv[-4:] == ["-m", "simulator", "--config", str(path)]
    assert fleet.port == cfg.local.simulator_metrics_port


def _run_in_background(path: Path) -> subprocess.CompletedProcess:
    """`fleet run` as its own process, as an operator runs it: the simulator outlives it."""
    return subprocess.run(
        [sys.executable, "starter.py", "--config", str(path), "fleet", "run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_fleet_cli_runs_the_simulator_in_the_background_once(
    emulators: dict[str, str], fleet_config: tuple[Path, DeploymentConfig], capsys: pytest.CaptureFixture
) -> None:
    path, cfg = fleet_config
    fleet = ["--config", str(path), "fleet"]
    assert starter.main([*fleet, "run"]) == 1
    assert "fleet provision" in capsys.readouterr().err
    assert starter.main([*fleet, "provision", "--devices", "3", "--workers", "2"]) == 0
    assert "3 devices (3 created or repaired)" in capsys.readouterr().out
    try:
        started = _run_in_background(path)
        assert started.returncode == 0 and "fleet" in started.stdout and "started" in started.stdout, started
        again = _run_in_background(path)
        assert again.returncode == 0 and "already running" in again.stdout, again
        pid = json.loads((cfg.state_dir / "run" / "fleet.json").read_text())["pid"]
        snap = _wait_status(cfg, pid)
        assert snap["devices"] == 3 and snap["running"]
        assert starter.main([*fleet, "status"]) == 0
        assert "3 devices, simulator running" in capsys.readouterr().out
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.local.simulator_metrics_port}/metrics") as r:
            exposed = r.read().decode()
        assert "iotfailover_sim_devices{region=" in exposed and "iotfailover_sim_bootstraps_total" in exposed
    finally:
        assert starter.main([*fleet, "stop"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not (cfg.state_dir / "run" / "fleet.json").exists()
    assert read_status(cfg)["running"] is False
    assert starter.main([*fleet, "status"]) == 3
    assert (cfg.state_dir / "logs" / "fleet.log").exists()


def _wait_status(cfg: DeploymentConfig, pid: int) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snap = read_status(cfg)
        if snap and snap["pid"] == pid:
            return snap
        time.sleep(0.1)
    raise AssertionError("the simulator wrote no status snapshot")
