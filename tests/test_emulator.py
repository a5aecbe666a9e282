"""The per-region emulator: regions share nothing, and the fault switch works through boto3."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from core.errors import is_retryable, is_throttle
from rehearsal import faults


def _iot(url: str, region: str):
    return boto3.client(
        "iot",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="t",
        aws_secret_access_key="t",
        config=Config(retries={"max_attempts": 1}),
    )


def test_regions_share_nothing(emulators: dict[str, str]) -> None:
    east, west = _iot(emulators["us-east-1"], "us-east-1"), _iot(emulators["us-west-2"], "us-west-2")
    east.create_thing(thingName="only-in-east")
    assert [t["thingName"] for t in east.list_things()["things"]] == ["only-in-east"]
    assert west.list_things()["things"] == []


@pytest.mark.parametrize("mode", ["outage", "throttle"])
def test_fault_switch_fails_requests_retryably(emulators: dict[str, str], mode: str) -> None:
    url = emulators["us-east-1"]
    faults.set_fault(url, mode)
    assert faults.get_fault(url)["mode"] == mode
    with pytest.raises(ClientError) as e:
        _iot(url, "us-east-1").list_things()
    assert is_retryable(e.value)
    assert is_throttle(e.value) == (mode == "throttle")
    # the other region is untouched
    _iot(emulators["us-west-2"], "us-west-2").list_things()
    faults.set_fault(url, "clear")
    _iot(url, "us-east-1").list_things()


def test_bad_fault_request_is_refused(emulators: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        faults.set_fault(emulators["us-east-1"], "meteor")
