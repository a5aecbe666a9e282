"""The IoT registry and shadow gaps filled in the emulator (rehearsal/iot_gaps.py), through boto3."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509

from core.certs import certificate_id
from rehearsal import pki


def _client(emulators: dict[str, str], service: str, region: str = "us-east-1") -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=emulators[region],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def iot(emulators: dict[str, str]) -> Any:
    return _client(emulators, "iot")


@pytest.fixture
def data(emulators: dict[str, str]) -> Any:
    return _client(emulators, "iot-data")


def _paged(call: Any, key: str, token_in: str, token_out: str, **kw: Any) -> tuple[list, int]:
    """Every item of a paged call and how many pages it took (at most 10: a token must end)."""
    items, pages, token = [], 0, None
    while pages < 10:
        resp = call(**kw, **({token_in: token} if token else {}))
        items += resp[key]
        pages += 1
        token = resp.get(token_out)
        if not token:
            return items, pages
    raise AssertionError(f"{call.__name__} paging did not end")


def test_ca_certificates_are_listed_paged_and_described_with_their_settings(iot: Any) -> None:
    first, second = pki.create_ca("CA-one"), pki.create_ca("CA-two")
    one = iot.register_ca_certificate(
        caCertificate=first.cert_pem, setAsActive=True, allowAutoRegistration=True, certificateMode="SNI_ONLY"
    )["certificateId"]
    two = iot.register_ca_certificate(caCertificate=second.cert_pem)["certificateId"]
    assert one == certificate_id(first.cert_pem)
    listed, pages = _paged(iot.list_ca_certificates, "certificates", "marker", "nextMarker", pageSize=1)
    assert pages == 2 and sorted(c["certificateId"] for c in listed) == sorted([one, two])
    ascending = iot.list_ca_certificates(ascendingOrder=True)["certificates"]
    assert [c["certificateId"] for c in ascending] == [one, two]
    assert [c["certificateId"] for c in iot.list_ca_certificates()["certificates"]] == [
        two,
        one,
    ]  # AWS default
    assert {c["status"] for c in listed} == {"ACTIVE", "INACTIVE"}

    desc = iot.describe_ca_certificate(certificateId=one)["certificateDescription"]
    assert (desc["status"], desc["autoRegistrationStatus"], desc["certificateMode"]) == (
        "ACTIVE",
        "ENABLE",
        "SNI_ONLY",
    )
    assert desc["validity"]["notAfter"] == first.cert.not_valid_after_utc
    iot.update_ca_certificate(certificateId=one, newStatus="INACTIVE", newAutoRegistrationStatus="DISABLE")
    desc = iot.describe_ca_certificate(certificateId=one)["certificateDescription"]
    assert (desc["status"], desc["autoRegistrationStatus"]) == ("INACTIVE", "DISABLE")
    with pytest.raises(ClientError) as e:
        iot.register_ca_certificate(caCertificate=first.cert_pem)
    assert e.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"


def test_device_certificates_have_the_same_id_everywhere_and_know_their_ca(emulators: dict[str, str]) -> None:
    ca = pki.create_ca()
    cert, _ = pki.issue_device_cert(ca, "dev-1")
    other, _ = pki.issue_device_cert(ca, "dev-2")
    ids = set()
    for region in emulators:
        iot = _client(emulators, "iot", region)
        ca_id = iot.register_ca_certificate(caCertificate=ca.cert_pem, setAsActive=True)["certificateId"]
        ids.add(iot.register_certificate(certificatePem=cert, caCertificatePem=ca.cert_pem)["certificateId"])
        desc = iot.describe_certificate(certificateId=certificate_id(cert))["certificateDescription"]
        assert desc["caCertificateId"] == ca_id and desc["status"] == "INACTIVE"  # AWS's default
        assert desc["certificateMode"] == "DEFAULT"
        assert (
            desc["validity"]["notBefore"]
            == x509.load_pem_x509_certificate(cert.encode()).not_valid_before_utc
        )
        # without caCertificatePem, the registered CA that signed it is found, as AWS does
        iot.register_certificate(certificatePem=other, status="ACTIVE")
        desc = iot.describe_certificate(certificateId=certificate_id(other))["certificateDescription"]
        assert (desc["caCertificateId"], desc["status"]) == (ca_id, "ACTIVE")
        for status in ("ACTIVE", "REVOKED"):
            iot.update_certificate(certificateId=certificate_id(cert), newStatus=status)
            assert (
                iot.describe_certificate(certificateId=certificate_id(cert))["certificateDescription"][
                    "status"
                ]
                == status
            )
    assert ids == {certificate_id(cert)}


def test_certificates_without_ca_and_paged_listings(iot: Any) -> None:
    ca = pki.create_ca()
    ca_id = iot.register_ca_certificate(caCertificate=ca.cert_pem, setAsActive=True)["certificateId"]
    signed = [pki.issue_device_cert(ca, f"d{i}")[0] for i in range(3)]
    for pem in signed:
        iot.register_certificate(certificatePem=pem, caCertificatePem=ca.cert_pem, setAsActive=True)
    loose, _ = pki.issue_device_cert(pki.create_ca("unregistered"), "x")
    iot.register_certificate_without_ca(certificatePem=loose, status="ACTIVE")
    desc = iot.describe_certificate(certificateId=certificate_id(loose))["certificateDescription"]
    assert "caCertificateId" not in desc and desc["certificateMode"] == "SNI_ONLY"

    by_ca, pages = _paged(
        iot.list_certificates_by_ca, "certificates", "marker", "nextMarker", caCertificateId=ca_id, pageSize=2
    )
    assert pages == 2 and sorted(c["certificateId"] for c in by_ca) == sorted(map(certificate_id, signed))
    everything, pages = _paged(iot.list_certificates, "certificates", "marker", "nextMarker", pageSize=3)
    assert pages == 2 and len(everything) == 4


def test_things_in_thing_group_recursive_and_paged(iot: Any) -> None:
    iot.create_thing_group(thingGroupName="fleet")
    iot.create_thing_group(thingGroupName="wave", parentGroupName="fleet")
    iot.create_thing_group(thingGroupName="sub", parentGroupName="wave")
    for name, group in [("a", "fleet"), ("b", "wave"), ("c", "sub"), ("d", "sub")]:
        iot.create_thing(thingName=name)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=name)
    assert iot.list_things_in_thing_group(thingGroupName="fleet")["things"] == ["a"]
    things, pages = _paged(
        iot.list_things_in_thing_group,
        "things",
        "nextToken",
        "nextToken",
        thingGroupName="fleet",
        recursive=True,
        maxResults=3,
    )
    assert pages == 2 and sorted(things) == ["a", "b", "c", "d"]
    with pytest.raises(ClientError) as e:
        iot.list_things_in_thing_group(thingGroupName="fleet", nextToken="not-a-token")
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    sub = iot.describe_thing_group(thingGroupName="sub")["thingGroupMetadata"]
    assert sub["parentGroupName"] == "wave"
    assert [g["groupName"] for g in sub["rootToParentThingGroups"]] == ["fleet", "wave"]
    assert iot.list_thing_groups_for_thing(thingName="c")["thingGroups"][0]["groupName"] == "sub"
    iot.delete_thing(thingName="c")  # AWS also takes a deleted thing out of its groups
    assert iot.list_things_in_thing_group(thingGroupName="sub")["things"] == ["d"]
    with pytest.raises(ClientError):
        iot.describe_thing(thingName="c")


def test_named_shadows_are_listed_until_deleted_and_keep_field_timestamps(iot: Any, data: Any) -> None:
    iot.create_thing(thingName="dev")

    def update(payload: dict, name: str | None = None) -> dict:
        kw = {"shadowName": name} if name else {}
        return json.loads(
            data.update_thing_shadow(thingName="dev", payload=json.dumps(payload), **kw)["payload"].read()
        )

    first = update(
        {"state": {"reported": {"connectivity": {"region": "us-east-1", "epoch": 1}, "fw": "1.0"}}}
    )
    time.sleep(1.1)  # shadow timestamps are in whole seconds
    second = update({"state": {"reported": {"connectivity": {"epoch": 2}}}})
    assert (first["version"], second["version"]) == (1, 2)
    shadow = json.loads(data.get_thing_shadow(thingName="dev")["payload"].read())
    meta = shadow["metadata"]["reported"]
    assert shadow["state"]["reported"]["connectivity"] == {"region": "us-east-1", "epoch": 2}
    assert meta["connectivity"]["epoch"]["timestamp"] == second["timestamp"] > first["timestamp"]
    assert meta["connectivity"]["region"]["timestamp"] == meta["fw"]["timestamp"] == first["timestamp"]

    update({"state": {"reported": {"a": 1}}}, "config")
    update({"state": {"desired": {"b": 2}}}, "ota")
    listed = data.list_named_shadows_for_thing(thingName="dev")
    assert sorted(listed["results"]) == ["config", "ota"] and listed["timestamp"] > 0
    data.delete_thing_shadow(thingName="dev", shadowName="ota")
    assert data.list_named_shadows_for_thing(thingName="dev")["results"] == ["config"]
    with pytest.raises(ClientError) as e:
        data.get_thing_shadow(thingName="dev", shadowName="ota")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    data.publish(topic="data/test/dev", qos=1, payload=b'{"t": 1}')


def test_conditional_shadow_updates(iot: Any, data: Any) -> None:
    iot.create_thing(thingName="dev")
    for version in (1, 5):  # no shadow yet: any expected version conflicts
        with pytest.raises(ClientError) as e:
            data.update_thing_shadow(thingName="dev", payload=json.dumps({"state": {}, "version": version}))
        assert e.value.response["Error"]["Code"] == "ConflictException"
    data.update_thing_shadow(thingName="dev", payload=json.dumps({"state": {"reported": {"epoch": 1}}}))
    data.update_thing_shadow(
        thingName="dev", payload=json.dumps({"state": {"reported": {"epoch": 2}}, "version": 1})
    )
    with pytest.raises(ClientError) as e:
        data.update_thing_shadow(
            thingName="dev", payload=json.dumps({"state": {"reported": {"epoch": 3}}, "version": 1})
        )
    assert e.value.response["Error"]["Code"] == "ConflictException"


def test_other_calls_the_controller_uses_answer_with_aws_shapes(iot: Any) -> None:
    """Already right in moto; kept here so a moto upgrade that breaks one is caught."""
    assert (
        "-ats.iot.us-east-1.amazonaws.com"
        in iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    )
    assert ".jobs.iot.us-east-1." in iot.describe_endpoint(endpointType="iot:Jobs")["endpointAddress"]
    iot.create_thing_type(thingTypeName="sensor", thingTypeProperties={"thingTypeDescription": "battery"})
    for i in range(5):
        iot.create_thing(
            thingName=f"t{i}", thingTypeName="sensor", attributePayload={"attributes": {"sku": "x"}}
        )
    things, pages = _paged(iot.list_things, "things", "nextToken", "nextToken", maxResults=2)
    assert pages == 3 and [t["thingName"] for t in things] == [f"t{i}" for i in range(5)]
    assert iot.describe_thing(thingName="t0")["thingTypeName"] == "sensor"

    doc = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
    )
    iot.create_policy(policyName="p", policyDocument=doc)
    assert (
        iot.create_policy_version(policyName="p", policyDocument=doc, setAsDefault=True)["policyVersionId"]
        == "2"
    )
    assert iot.get_policy(policyName="p")["defaultVersionId"] == "2"
    ca = pki.create_ca()
    cert, _ = pki.issue_device_cert(ca, "t0")
    arn = iot.register_certificate_without_ca(certificatePem=cert, status="ACTIVE")["certificateArn"]
    iot.attach_policy(policyName="p", target=arn)
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == ["p"]
    assert iot.list_targets_for_policy(policyName="p")["targets"] == [arn]
    iot.attach_thing_principal(thingName="t0", principal=arn)
    assert iot.list_thing_principals(thingName="t0")["principals"] == [arn]
    assert iot.list_principal_things(principal=arn)["things"] == ["t0"]
    iot.detach_policy(policyName="p", target=arn)
    assert iot.list_attached_policies(target=arn)["policies"] == []


def test_thing_attributes_are_limited_as_in_aws(iot: Any) -> None:
    """3 attributes on a thing without a thing type, 50 with one; checked on the result of an update."""
    three = {"attributes": {"a": "1", "b": "2", "c": "3"}}
    four = {"attributes": {"a": "1", "b": "2", "c": "3", "d": "4"}}
    iot.create_thing(thingName="plain", attributePayload=three)
    with pytest.raises(ClientError) as e:
        iot.create_thing(thingName="too-many", attributePayload=four)
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    with pytest.raises(ClientError) as e:  # merged: 3 + 1
        iot.update_thing(thingName="plain", attributePayload={"attributes": {"d": "4"}, "merge": True})
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    assert iot.describe_thing(thingName="plain")["attributes"] == three["attributes"]  # left as it was
    iot.update_thing(thingName="plain", attributePayload={"attributes": {"c": "", "d": "4"}, "merge": True})
    iot.create_thing_type(thingTypeName="typed")
    many = {"attributes": {f"k{i}": str(i) for i in range(50)}}
    iot.create_thing(thingName="typed-thing", thingTypeName="typed", attributePayload=many)
    with pytest.raises(ClientError):  # losing its type, it may keep only 3
        iot.update_thing(thingName="typed-thing", removeThingType=True)
    with pytest.raises(ClientError):
        iot.create_thing(
            thingName="typed-51",
            thingTypeName="typed",
            attributePayload={"attributes": {**many["attributes"], "x": "y"}},
        )


def test_groups_per_thing_names_and_shadow_size_are_limited_as_in_aws(iot: Any, data: Any) -> None:
    iot.create_thing(thingName="joiner")
    for i in range(10):
        iot.create_thing_group(thingGroupName=f"g{i}")
        iot.add_thing_to_thing_group(thingGroupName=f"g{i}", thingName="joiner")
    iot.create_thing_group(thingGroupName="g10")
    with pytest.raises(ClientError, match="10 static thing groups") as e:
        iot.add_thing_to_thing_group(thingGroupName="g10", thingName="joiner")
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    iot.add_thing_to_thing_group(thingGroupName="g3", thingName="joiner")  # already a member: fine
    for call in (
        lambda: iot.create_thing(thingName="has space"),
        lambda: iot.create_thing_group(thingGroupName="a/b"),
        lambda: iot.create_policy(policyName="p:q", policyDocument="{}"),
        lambda: iot.create_job(jobId="bad.job", targets=[iot.describe_thing(thingName="joiner")["thingArn"]]),
        lambda: data.update_thing_shadow(thingName="joiner", shadowName="bad shadow", payload=b"{}"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "InvalidRequestException", e.value
    data.update_thing_shadow(
        thingName="joiner", payload=json.dumps({"state": {"reported": {"a": 1}}}).encode()
    )
    big = json.dumps({"state": {"reported": {"blob": "x" * 8200}}}).encode()
    with pytest.raises(ClientError) as e:
        data.update_thing_shadow(thingName="joiner", payload=big)
    assert e.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    shadow = json.loads(data.get_thing_shadow(thingName="joiner")["payload"].read())
    assert shadow["state"]["reported"] == {"a": 1} and shadow["version"] == 1


def test_event_configurations_start_off_as_in_a_new_account_and_keep_what_is_set(iot: Any) -> None:
    configs = iot.describe_event_configurations()["eventConfigurations"]
    assert configs["THING"] == {"Enabled": False} and configs["JOB"] == {"Enabled": False}
    iot.update_event_configurations(eventConfigurations={"THING": {"Enabled": True}})
    configs = iot.describe_event_configurations()["eventConfigurations"]
    assert configs["THING"] == {"Enabled": True} and configs["THING_GROUP"] == {"Enabled": False}
    with pytest.raises(ClientError) as refused:
        iot.update_event_configurations(eventConfigurations={"THINGS": {"Enabled": True}})
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
