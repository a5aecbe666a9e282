"""The bootstrap service logic and its Lambda entry point, against the emulators."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
from activities.context import Deployments
from bootstrap import lambda_handler
from bootstrap.service import BootstrapService, TtlCache, _groups_matter
from core.bootstrap_records import to_item
from core.config import DeploymentConfig
from rehearsal import faults, pki
from tests.bootstrap_support import cold_lambda, register_thing, sample, with_device_endpoints

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture
def config(config: DeploymentConfig) -> DeploymentConfig:
    return with_device_endpoints(config)


@pytest.fixture
def deployments(config: DeploymentConfig) -> Deployments:
    d = Deployments([config])
    BootstrapActivities(d).flip_bootstrap(
        FlipBootstrapInput(config.name, epoch=7, primary=WEST, order=[EAST, WEST], retry=3)
    )
    return d


def test_known_device_gets_the_contract(config: DeploymentConfig, deployments: Deployments) -> None:
    aws = deployments.aws(config.name)
    register_thing(aws, "sensor-1", attributes={"application": "argus"})
    register_thing(aws, "sensor-2")
    svc = BootstrapService(config, EAST, cache_ttl=0)
    ans = svc.answer("sensor-1")
    assert ans.status == 200
    body = json.loads(ans.json())
    assert body["epoch"] == 7
    assert [(e["region"], e["primary"], e["retry"]) for e in body["endpoints"]] == [
        (WEST, True, 3),
        (EAST, False, 3),
    ]
    for e in body["endpoints"]:
        assert e["endpoint"] == config.regions[e["region"]].iot_endpoint
        assert e["CAs"] == [config.ca_pem()] and "BEGIN CERTIFICATE" in e["CAs"][0]
    assert body["topics"] == {
        "configurations": "cmd/argus/config/sensor-1/",
        "sensor": "data/argus/sensor-1/",
    }
    assert svc.answer("sensor-2").body["topics"]["sensor"] == "data/test/sensor-2/"  # the fleet's application


def test_unknown_device_is_404(config: DeploymentConfig, deployments: Deployments) -> None:
    register_thing(deployments.aws(config.name), "only-east", regions=[EAST])
    before = sample("iotfailover_bootstrap_requests_total", region=WEST, status="404")
    assert BootstrapService(config, EAST, cache_ttl=0).answer("only-east").status == 200
    ans = BootstrapService(config, WEST, cache_ttl=0).answer("only-east")
    assert ans.status == 404 and "not registered in us-west-2" in ans.body["error"]
    assert sample("iotfailover_bootstrap_requests_total", region=WEST, status="404") == before + 1


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "dev/1", "dév"])
def test_malformed_thing_name_is_400_and_counted(config: DeploymentConfig, name: str) -> None:
    before = sample("iotfailover_bad_input_total", source="bootstrap_request", reason="thing_name")
    ans = BootstrapService(config, EAST, cache_ttl=0).answer(name)
    assert ans.status == 400 and "invalid thing name" in ans.body["error"]
    assert (
        sample("iotfailover_bad_input_total", source="bootstrap_request", reason="thing_name") == before + 1
    )


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"epoch": "seven"}, "epoch must be an integer"),
        ({"regions": ["us-east-1", "mars-1"]}, "not regions of this deployment"),
        ({"primary": "us-east-1"}, "must be the first of regions"),
        ({"regions": []}, "non-empty list"),
    ],
)
def test_malformed_record_is_500_and_counted(
    config: DeploymentConfig, deployments: Deployments, item: dict, problem: str
) -> None:
    aws = deployments.aws(config.name)
    register_thing(aws, "sensor-3", regions=[EAST])
    good = {"scope": "default", "epoch": 8, "primary": WEST, "regions": [WEST, EAST], "retry": 5}
    aws.dynamodb(EAST).put_item(TableName=config.bootstrap_table, Item=to_item({**good, **item}))
    before = sample("iotfailover_bad_input_total", source="bootstrap_table", reason="malformed_record")
    ans = BootstrapService(config, EAST, cache_ttl=0).answer("sensor-3")
    assert ans.status == 500 and problem in ans.body["error"] and "malformed" in ans.body["error"]
    assert (
        sample("iotfailover_bad_input_total", source="bootstrap_table", reason="malformed_record")
        == before + 1
    )


def test_cache_serves_a_boot_storm_without_rereading(
    config: DeploymentConfig, deployments: Deployments
) -> None:
    register_thing(deployments.aws(config.name), "sensor-4", regions=[EAST])
    svc = BootstrapService(config, EAST, cache_ttl=60)
    calls_before = sample("iotfailover_aws_calls_total", region=EAST, api="Scan", outcome="ok")
    hits_before = sample("iotfailover_bootstrap_cache_total", region=EAST, kind="thing", result="hit")
    assert not svc.from_cache("sensor-4")
    for _ in range(20):
        assert svc.answer("sensor-4").status == 200
    assert sample("iotfailover_aws_calls_total", region=EAST, api="Scan", outcome="ok") == calls_before + 1
    assert (
        sample("iotfailover_bootstrap_cache_total", region=EAST, kind="thing", result="hit")
        == hits_before + 19
    )


def test_only_group_scopes_newer_than_the_default_need_the_things_groups() -> None:
    default = {"scope": "default", "epoch": Decimal(5)}
    assert not _groups_matter({})
    assert not _groups_matter({"default": default, "group:old": {"epoch": Decimal(4)}})
    assert _groups_matter({"default": default, "group:canary": {"epoch": Decimal(6)}})
    assert _groups_matter({"group:canary": {"epoch": Decimal(0)}})  # never flipped by default
    assert _groups_matter({"default": default, "group:broken": {"epoch": "six"}})  # surfaces as 500


def test_ttl_cache_expires_and_loads_once_per_key() -> None:
    cache = TtlCache(0.05, "test", "unit")
    loads: list[int] = []
    assert cache.get("k", lambda: loads.append(1) or "v") == "v"
    assert cache.get("k", lambda: loads.append(1) or "w") == "v"
    time.sleep(0.06)
    assert cache.get("k", lambda: loads.append(1) or "w") == "w"
    assert len(loads) == 2


def _event(thing: str, cert_pem: str | None = None, http_api: bool = False) -> dict:
    """An API Gateway proxy event: REST API (payload 1.0) or HTTP API (2.0), with mTLS when cert_pem."""
    tls = {"clientCert": {"clientCertPem": cert_pem}} if cert_pem else {}
    if http_api:
        return {
            "version": "2.0",
            "routeKey": "GET /v1/bootstrap/{thingName}",
            "rawPath": f"/v1/bootstrap/{thing}",
            "pathParameters": {"thingName": thing},
            "requestContext": {"authentication": tls, "http": {"method": "GET"}},
        }
    return {
        "resource": "/v1/bootstrap/{thing}",
        "path": f"/v1/bootstrap/{thing}",
        "httpMethod": "GET",
        "pathParameters": {"thing": thing},
        "requestContext": {"identity": tls},
    }


def test_lambda_handler_answers_api_gateway_events(
    config: DeploymentConfig, deployments: Deployments, local_ca: pki.LocalCA, tmp_path, monkeypatch
) -> None:
    register_thing(deployments.aws(config.name), "sensor-5", regions=[WEST])
    cold_lambda(monkeypatch, config, tmp_path, WEST)
    own_cert, _ = pki.issue_device_cert(local_ca, "sensor-5")
    resp = lambda_handler.handler(_event("sensor-5", own_cert))
    assert resp["statusCode"] == 200 and resp["headers"]["Content-Type"] == "application/json"
    assert json.loads(resp["body"])["endpoints"][0] | {"endpoint": "", "CAs": []} == {
        "endpoint": "",
        "region": WEST,
        "CAs": [],
        "primary": True,
        "retry": 3,
    }
    assert lambda_handler.handler(_event("sensor-5", own_cert, http_api=True))["statusCode"] == 200
    other_cert, _ = pki.issue_device_cert(local_ca, "sensor-6")
    assert lambda_handler.handler(_event("sensor-5", other_cert))["statusCode"] == 403
    assert lambda_handler.handler(_event("sensor-5", other_cert, http_api=True))["statusCode"] == 403
    assert lambda_handler.handler(_event("nobody"))["statusCode"] == 404
    assert lambda_handler.handler(_event("bad name"))["statusCode"] == 400
    health = lambda_handler.handler({"path": "/healthz", "httpMethod": "GET"})
    assert health["statusCode"] == 200 and json.loads(health["body"])["table"] == "ready"


def test_a_failed_healthz_does_not_turn_devices_away(
    config: DeploymentConfig, deployments: Deployments, tmp_path, monkeypatch
) -> None:
    """/healthz is public: its own check reports, it never decides what devices are answered."""
    register_thing(deployments.aws(config.name), "sensor-7", regions=[WEST])
    cold_lambda(monkeypatch, config, tmp_path, WEST, IOTFAILOVER_CACHE_SECONDS="0")
    assert lambda_handler.handler(_event("sensor-7"))["statusCode"] == 200  # a warm instance
    faults.set_fault(config.regions[WEST].endpoint_url, "outage")
    health = lambda_handler.handler({"rawPath": "/healthz"})
    assert health["statusCode"] == 503 and "ServiceUnavailable" in json.loads(health["body"])["table"]
    faults.set_fault(config.regions[WEST].endpoint_url, "clear")
    assert lambda_handler.handler(_event("sensor-7"))["statusCode"] == 200  # the table answers again


def test_a_failed_read_answers_503_and_the_cache_waits_for_the_next_good_read(
    config: DeploymentConfig, deployments: Deployments
) -> None:
    """A region whose reads fail must not keep handing out cached answers it can no longer confirm;
    the first read that succeeds again closes the breaker."""
    register_thing(deployments.aws(config.name), "cached-1", regions=[EAST])
    register_thing(deployments.aws(config.name), "new-1", regions=[EAST])
    svc = BootstrapService(config, EAST, cache_ttl=60)
    assert svc.answer("cached-1").status == 200
    east = config.regions[EAST].endpoint_url
    faults.set_fault(east, "outage")
    try:
        assert svc.answer("cached-1").status == 200  # within its TTL, nothing says the table is gone
        ans = svc.answer("new-1")  # a read fails: that request is answered 503 ...
        assert ans.status == 503 and ans.headers["Retry-After"] and ans.body["retry"] is True
        assert sample("iotfailover_bootstrap_reads_failing", region=EAST) == 1
        assert not svc.from_cache("cached-1")  # ... and cached answers wait for a good read
        assert svc.answer("cached-1").status == 503
    finally:
        faults.set_fault(east, "clear")
    assert svc.answer("cached-1").status == 200
    assert sample("iotfailover_bootstrap_reads_failing", region=EAST) == 0
    assert svc.from_cache("cached-1")


def test_throttled_reads_answer_503_without_opening_the_breaker(
    config: DeploymentConfig, deployments: Deployments
) -> None:
    """Throttling means the region is up and pushing back: that request is retried, nothing more."""
    register_thing(deployments.aws(config.name), "cached-2", regions=[EAST])
    svc = BootstrapService(config, EAST, cache_ttl=60)
    assert svc.answer("cached-2").status == 200
    faults.set_fault(config.regions[EAST].endpoint_url, "throttle")
    assert svc.answer("ghost-2").status == 503
    ok, body = svc.health()
    assert ok and body["table"] == "throttled"
    faults.set_fault(config.regions[EAST].endpoint_url, "clear")
    assert svc.from_cache("cached-2") and svc.answer("cached-2").status == 200
