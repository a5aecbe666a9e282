"""Deployment config validation: every problem reported with its field and a fix hint."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from temporalio.testing import WorkflowEnvironment

from activities.context import Deployments
from core.aws import AwsClients
from core.config import ConfigError, DeploymentConfig, load_config, parse_config
from core.temporal import DATA_CONVERTER
from tests.conftest import make_config
from worker import build_worker
from workflows.deployment import DeploymentInput, DeploymentState

REPO = Path(__file__).resolve().parent.parent


def _raw(ca: Path, **over: object) -> dict:
    raw = {
        "deployment": {"name": "fleet", "mode": "active-passive", "ca_certificate": str(ca)},
        "regions": {
            "us-east-1": {"role": "primary", "endpoint_url": "http://127.0.0.1:4566"},
            "us-west-2": {"role": "standby"},
        },
        "fleet": {"thing_group": "fleet"},
    }
    raw.update(over)
    return raw


@pytest.fixture
def ca(tmp_path: Path, local_ca) -> Path:
    f = tmp_path / "ca.pem"
    f.write_text(local_ca.cert_pem)
    return f


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    return e.value.problems


def test_valid_config_parses(ca: Path) -> None:
    cfg = parse_config(_raw(ca))
    assert cfg.primary == "us-east-1"
    assert cfg.standbys() == ["us-west-2"]
    assert cfg.health.unhealthy_after == 3


def test_shipped_configs_are_valid() -> None:
    local = load_config(REPO / "deploy/local/deployment.toml", need_ca=False)
    assert (local.name, local.primary, local.standbys()) == ("demo", "us-east-1", ["us-west-2"])
    assert local.is_local
    aa = load_config(REPO / "deploy/examples/active-active.toml", need_ca=False)
    assert aa.mode == "active-active" and not aa.is_local
    assert aa.standbys() == ["us-east-1"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"regions": {"mars-north-1": {"role": "primary"}, "us-west-2": {"role": "standby"}}},
            "unknown AWS IoT region 'mars-north-1'",
        ),
        ({"regions": {"us-east-1": {"role": "primary"}}}, "at least two regions"),
        (
            {"regions": {"us-east-1": {"role": "primary"}, "us-west-2": {"role": "primary"}}},
            'exactly one role = "primary", found 2',
        ),
        ({"health": {"interval_seconds": -5}}, "health.interval_seconds: Input should be greater than 0"),
        ({"cutover": {"approval": "sometimes"}}, "cutover.approval"),
        ({"fleet": {"thing_group": "g", "colour": "blue"}}, "fleet.colour: unknown setting"),
        (
            {"regions": {"us-east-1": {"role": "boss"}, "us-west-2": {"role": "standby"}}},
            "regions.us-east-1.role",
        ),
        (
            {"failover": {"standby_order": ["eu-west-1"]}},
            "failover.standby_order: 'eu-west-1' is not a region",
        ),
    ],
)
def test_each_problem_is_named(ca: Path, change: dict, expected: str) -> None:
    problems = _problems(_raw(ca, **change))
    assert any(expected in p for p in problems), problems


def test_missing_ca_file_and_fields_reported_together(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "nope.pem")
    del raw["fleet"]
    raw["deployment"]["mode"] = "active-sideways"
    problems = _problems(raw)
    assert any(p.startswith("fleet: is required") for p in problems)
    assert any(p.startswith("deployment.mode:") and "hint" in p for p in problems)


def test_missing_ca_file(tmp_path: Path) -> None:
    problems = _problems(_raw(tmp_path / "nope.pem"))
    assert any("deployment.ca_certificate: file not found" in p for p in problems)


def test_private_key_is_refused_as_ca(tmp_path: Path, local_ca) -> None:
    f = tmp_path / "ca.pem"
    f.write_text(local_ca.cert_pem + "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    assert any("private key" in p for p in _problems(_raw(f)))


def _rejected(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("iotfailover_bad_input_total", {"source": "config", "reason": reason}) or 0
    )


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[deployment\nname=")
    before = _rejected("bad_toml"), _rejected("not_found")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")
    assert (_rejected("bad_toml"), _rejected("not_found")) == (before[0] + 1, before[1] + 1)


def test_every_rejected_config_is_counted(ca: Path) -> None:
    before = _rejected("invalid")
    _problems(_raw(ca, quotas={"per_api": {"ListThings": 0}}, cutover={"canary_size": 9, "max_wave_size": 3}))
    _problems({"deployment": "x"})
    assert _rejected("invalid") == before + 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"deployment": "x"}, "deployment: must be a table"),
        ({"deployment": ["name", "fleet"]}, "deployment: must be a table"),
        ({"deployment": {"name": "f", "mode": "active-passive", "ca_certificate": 5}}, "ca_certificate"),
        ({"fleet": "everything"}, "fleet:"),
        ({"source_path": "/etc/passwd"}, "source_path: unknown section"),
    ],
)
def test_a_config_of_the_wrong_shape_is_a_config_error(ca: Path, raw: dict, expected: str) -> None:
    base = _raw(ca)
    base.update(raw)
    with pytest.raises(ConfigError) as e:
        parse_config(base, ca.parent / "deployment.toml")
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_a_config_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="a TOML table"):
        parse_config(["deployment"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"quotas": {"per_api": {"ListThings": 0}}},
            "quotas.per_api.ListThings: Input should be greater than 0",
        ),
        (
            {"quotas": {"per_api": {"CreateJob": -3}}},
            "quotas.per_api.CreateJob: Input should be greater than 0",
        ),
        ({"quotas": {"default_rps": float("inf")}}, "quotas.default_rps: Input should be a finite number"),
        (
            {"cutover": {"cooldown_minutes": float("inf")}},
            "cutover.cooldown_minutes: Input should be a finite",
        ),
        (
            {"cutover": {"verify_timeout_seconds": float("nan")}},
            "cutover.verify_timeout_seconds: Input should be",
        ),
        (
            {"health": {"interval_seconds": 1e300}},
            "health.interval_seconds: Input should be less than or equal",
        ),
        ({"failover": {"min_interval_minutes": 1e18}}, "failover.min_interval_minutes: Input should be less"),
        ({"replication": {"reconcile_interval_minutes": 0}}, "replication.reconcile_interval_minutes"),
        ({"local": {"temporal_port": 70000}}, "local.temporal_port"),
        ({"cutover": {"canary_size": 50, "max_wave_size": 10}}, "cutover.canary_size: 50 is larger than"),
        (
            {"cutover": {"verify_poll_seconds": 60, "verify_timeout_seconds": 30}},
            "cutover.verify_poll_seconds",
        ),
    ],
)
def test_rates_and_durations_are_finite_positive_and_consistent(
    ca: Path, change: dict, expected: str
) -> None:
    problems = _problems(_raw(ca, **change))
    assert any(expected in p for p in problems), problems


def test_every_problem_of_every_section_is_reported_at_once(ca: Path) -> None:
    problems = _problems(
        _raw(
            ca,
            quotas={"per_api": {"ListThings": 0}},
            cutover={"canary_size": 50, "max_wave_size": 10},
            health={"interval_seconds": float("inf")},
        )
    )
    fields = sorted(p.split(":", 1)[0] for p in problems)
    assert fields == ["cutover.canary_size", "health.interval_seconds", "quotas.per_api.ListThings"], problems
    assert all("hint" in p for p in problems if p.startswith("cutover.")), problems


SECRET = "ext-id-that-must-stay-out-of-history"


def _with_external_id(emulators: dict[str, str], ca: Path, secret: str = SECRET) -> DeploymentConfig:
    role = "arn:aws:iam::123456789012:role/iotfailover-controller"
    return make_config(
        emulators,
        ca,
        regions={
            r: {"role": role_, "endpoint_url": emulators[r], "role_arn": role, "external_id": secret}
            for r, role_ in (("us-east-1", "primary"), ("us-west-2", "standby"))
        },
    )


def test_the_external_id_is_in_no_serialized_form_of_the_config(emulators: dict[str, str], ca: Path) -> None:
    cfg = _with_external_id(emulators, ca)
    assert cfg.regions["us-east-1"].external_id == SECRET  # the worker's own copy keeps it
    for encoded in (
        cfg.model_dump_json(),
        str(cfg.model_dump()),
        repr(cfg),
        DATA_CONVERTER.payload_converter.to_payloads([DeploymentInput(cfg)])[0].data.decode(),
    ):
        assert SECRET not in encoded
    decoded = DATA_CONVERTER.payload_converter.from_payloads(
        DATA_CONVERTER.payload_converter.to_payloads([cfg]), [DeploymentConfig]
    )[0]
    assert decoded.regions["us-east-1"].external_id is None and decoded.regions["us-east-1"].role_arn


async def test_the_external_id_never_reaches_workflow_history(
    temporal_env: WorkflowEnvironment, emulators: dict[str, str], ca: Path
) -> None:
    cfg = _with_external_id(emulators, ca)
    for region in cfg.regions:
        AwsClients(cfg).iot(region).create_thing_group(thingGroupName=cfg.fleet.thing_group)
    client, task_queue = temporal_env.client, f"tq-{uuid.uuid4().hex[:10]}"
    async with build_worker(client, task_queue, Deployments([cfg], client=client)):
        handle = await client.start_workflow(
            "DeploymentWorkflow", DeploymentInput(cfg), id=f"deployment-{cfg.name}", task_queue=task_queue
        )
        for _ in range(200):
            state = await handle.query("state", result_type=DeploymentState)
            if state and state.initialized:
                break
            await asyncio.sleep(0.2)
        assert state.initialized and state.epoch == 1  # its activities assumed the roles with the id
        regions = {r: c.model_copy(update={"external_id": SECRET + "-2"}) for r, c in cfg.regions.items()}
        await handle.execute_update("reload_config", cfg.model_copy(update={"regions": regions}))
        history = _readable((await handle.fetch_history()).to_json())
        await handle.terminate()
    assert "reload_config" in history and cfg.regions["us-east-1"].role_arn in history  # payloads read
    assert SECRET not in history


def _readable(history_json: str) -> str:
    """A history's JSON with every payload's data decoded (the JSON form holds them in base64)."""
    decoded: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str):
                decoded.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(history_json))
    return "\n".join([history_json, *decoded])
