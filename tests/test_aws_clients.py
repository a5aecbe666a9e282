"""The per-region client factory against the emulators: endpoints, roles, throttles, paging."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from core.aws import AwsClients, all_items, fetch_page
from core.config import DeploymentConfig
from core.errors import is_throttle, to_application_error
from core.ratelimit import RateLimiter
from rehearsal import faults
from tests.conftest import make_config


def test_each_region_gets_its_own_clients(config: DeploymentConfig) -> None:
    aws = AwsClients(config)
    aws.iot("us-east-1").create_thing(thingName="east-thing")
    assert aws.iot("us-east-1") is aws.iot("us-east-1")
    assert [t["thingName"] for t in all_items(aws.iot("us-west-2"), "list_things", "things")] == []
    aws.iot_data("us-east-1").update_thing_shadow(
        thingName="east-thing", payload=json.dumps({"state": {"reported": {"x": 1}}})
    )
    shadow = json.loads(aws.iot_data("us-east-1").get_thing_shadow(thingName="east-thing")["payload"].read())
    assert shadow["state"]["reported"] == {"x": 1}


def test_role_is_assumed_per_region(emulators: dict[str, str], config: DeploymentConfig) -> None:
    cfg = make_config(
        emulators,
        config.ca_certificate,
        regions={
            "us-east-1": {
                "role": "primary",
                "endpoint_url": emulators["us-east-1"],
                "role_arn": "arn:aws:iam::123456789012:role/iotfailover-controller",
                "external_id": "demo-external-id",
            },
            "us-west-2": {"role": "standby", "endpoint_url": emulators["us-west-2"]},
        },
    )
    aws = AwsClients(cfg)
    creds = aws._session("us-east-1").get_credentials().get_frozen_credentials()
    assert creds.access_key != "testing" and creds.token  # temporary credentials from STS
    aws.iot("us-east-1").list_things()


_ASSUMED = b"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIATESTING</AccessKeyId><SecretAccessKey>s</SecretAccessKey>
<SessionToken>t</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROATESTING:x</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/r/x</Arn>
</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"""


def test_the_external_id_is_sent_to_sts_though_it_is_never_serialized(config: DeploymentConfig) -> None:
    """The config keeps external_id out of every serialized form; the worker's clients still send it."""
    seen: list[dict[str, list[str]]] = []

    class Sts(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(_ASSUMED)))
            self.end_headers()
            self.wfile.write(_ASSUMED)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sts = f"http://127.0.0.1:{server.server_port}"
        role = "arn:aws:iam::123456789012:role/iotfailover-controller"
        cfg = make_config(
            {"us-east-1": sts, "us-west-2": sts},
            config.ca_certificate,
            regions={
                "us-east-1": {"role": "primary", "endpoint_url": sts, "role_arn": role, "external_id": "x-42"}
            },
        )
        assert "x-42" not in cfg.model_dump_json()
        creds = AwsClients(cfg)._session("us-east-1").get_credentials().get_frozen_credentials()
    finally:
        server.shutdown()
        server.server_close()
    assert creds.access_key == "ASIATESTING"
    assert [(q["Action"], q["RoleArn"], q["ExternalId"]) for q in seen] == [
        (["AssumeRole"], [role], ["x-42"])
    ]


def test_paging_walks_every_item(config: DeploymentConfig) -> None:
    aws = AwsClients(config)
    for i in range(25):
        aws.iot("us-east-1").create_thing(thingName=f"t{i:02d}")
    page, token = fetch_page(aws.iot("us-east-1"), "list_things", "things", page_size=10)
    assert len(page) == 10 and token
    names = [t["thingName"] for t in all_items(aws.iot("us-east-1"), "list_things", "things", page_size=10)]
    assert sorted(names) == [f"t{i:02d}" for i in range(25)]
    rest, end = fetch_page(aws.iot("us-east-1"), "list_things", "things", token, page_size=20)
    assert (
        len(rest) == 15
        and end is None
        and not {t["thingName"] for t in page} & {t["thingName"] for t in rest}
    )
    # a raw AWS token, as a worker from before the paginators heartbeated it, resumes too
    raw = aws.iot("us-east-1").list_things(maxResults=10)["nextToken"]
    assert fetch_page(aws.iot("us-east-1"), "list_things", "things", raw, page_size=20)[0] == rest


def test_throttles_are_counted_and_slow_the_limiter(config: DeploymentConfig) -> None:
    aws = AwsClients(config, max_attempts=2)
    before = aws.limiter.rate("us-east-1", "ListThings")
    faults.set_fault(config.regions["us-east-1"].endpoint_url, "throttle")
    with pytest.raises(ClientError) as e:
        aws.iot("us-east-1").list_things()
    assert is_throttle(e.value)
    assert aws.limiter.rate("us-east-1", "ListThings") < before
    seen = REGISTRY.get_sample_value(
        "iotfailover_aws_throttles_total", {"region": "us-east-1", "api": "ListThings"}
    )
    assert seen and seen >= 2
    err = to_application_error(e.value, "listing things", "us-east-1")
    assert not err.non_retryable


def test_validation_errors_are_not_retried(config: DeploymentConfig) -> None:
    aws = AwsClients(config)
    with pytest.raises(ClientError) as e:
        aws.iot("us-east-1").describe_thing(thingName="missing")
    err = to_application_error(e.value, "describing thing", "us-east-1")
    assert err.non_retryable and "hint" in str(err)


def test_rate_limiter_recovers_after_throttle() -> None:
    rl = RateLimiter({"X": 100}, 10)
    rl.throttled("r", "X")
    assert rl.rate("r", "X") == 50
    for _ in range(20):
        rl.acquire("r", "X")
    assert rl.rate("r", "X") <= 100
