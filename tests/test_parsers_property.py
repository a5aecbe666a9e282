"""Parsers of outside input, under hostile and arbitrary input: a result or the parser's own error.

Each parser (registry events, device certificates' common names, the deployment config, devices'
shadow reports) either returns a valid result or raises its own error type (EventError,
CertificateError, ConfigError; a DeviceReport that confirms nothing), never a TypeError,
RecursionError or OverflowError that would poison a whole drain or a config.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from core.certs import CertificateError, device_identity
from core.config import ConfigError, parse_config
from core.device_report import DeviceReport
from replication.events import OPERATIONS, EventError, parse_event

# cryptography warns of a CN over 64 characters, building or reading one: hostile CNs are the point
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
DEEP = "[" * 5000 + "]" * 5000

_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(common_name: str) -> str:
    """A self-signed certificate whose CN is exactly `common_name` (no length check: hostile CNs)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_trees = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)
numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats()


# --- device certificates: the JSON common name -------------------------------------------------


def test_a_device_id_is_read_from_the_json_common_name() -> None:
    ident = device_identity(_cert('{"id":"device-01:a_b","sku":"2563x01189"}'))
    assert (ident.device_id, ident.sku) == ("device-01:a_b", "2563x01189")
    assert device_identity(_cert('{"id":"d1"}')).sku is None
    assert device_identity(_cert('{"id":"d1","sku":2563}')).sku == "2563"


@pytest.mark.parametrize(
    "cn",
    [
        '{"id": "d1\\u0000x"}',
        '{"id": "../etc/passwd"}',
        '{"id": " d1 "}',
        '{"id": "d1\\u202e"}',  # a bidi override: looks like another name in a console
        '{"id": "d\\u00e9vice"}',
        '{"id": ""}',
        '{"id": "' + "a" * 129 + '"}',
        '{"id": 12}',
        '{"id": ' + DEEP + "}",
        '{"id": "d1", "sku": ' + DEEP + "}",
        '{"id": "d1", "sku": {"a": 1}}',
        '{"id": "d1", "sku": "has spaces"}',
        '{"id": "d1", "n": ' + "9" * 5000 + "}",
        DEEP,
        "not json",
    ],
    ids=lambda cn: cn[:30],
)
def test_a_common_name_that_names_no_valid_thing_is_a_certificate_error(cn: str) -> None:
    with pytest.raises(CertificateError):
        device_identity(_cert(cn))


common_names = st.fixed_dictionaries(
    {"id": st.text(max_size=12) | st.from_regex(THING_NAME, fullmatch=True) | json_trees},
    optional={"sku": st.text(max_size=12) | json_trees},
).map(json.dumps)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(common_names, json_trees.map(json.dumps), st.text(max_size=80)))
def test_any_common_name_is_a_valid_thing_name_or_a_certificate_error(cn: str) -> None:
    if not cn:
        return  # a certificate cannot carry an empty name attribute
    try:
        ident = device_identity(_cert(cn))
    except CertificateError:
        return
    assert THING_NAME.match(ident.device_id)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_as_a_pem_is_a_certificate_error(pem: str) -> None:
    with pytest.raises(CertificateError):
        device_identity(pem)


# --- registry events ------------------------------------------------------------------------------


def _event_is_valid(body: str) -> None:
    try:
        event = parse_event(body)
    except EventError as e:
        assert e.reason in {"bad_json", "unknown_type", "missing_field"}
        return
    assert event.operation in OPERATIONS
    assert all(isinstance(kind, str) and isinstance(name, str) and name for kind, name in event.items)
    assert event.timestamp_ms is None or 0 <= event.timestamp_ms <= 2**53


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_an_event_or_an_event_error(body: str) -> None:
    _event_is_valid(body)


event_fields = st.fixed_dictionaries(
    {},
    optional={
        "eventType": st.sampled_from(
            ["THING_EVENT", "THING_GROUP_MEMBERSHIP_EVENT", "CERTIFICATE_EVENT", "POLICY_EVENT", "X"]
        )
        | json_trees,
        "operation": st.sampled_from(sorted(OPERATIONS)) | json_trees,
        "thingName": st.text(max_size=10) | json_trees,
        "thingArn": st.just("arn:aws:iot:us-east-1:1:thing/d1") | json_trees,
        "globalCertIdentifier": st.text(max_size=10) | json_trees,
        "thingPolicyName": st.text(max_size=10) | json_trees,
        "certificateId": st.text(max_size=10) | json_trees,
        "caCertificateId": st.text(max_size=10) | json_trees,
        "timestamp": st.integers() | st.floats() | st.text(max_size=30) | json_trees,
        "eventId": json_trees,
        "topic": st.just("$aws/events/certificates/registered/ca") | json_trees,
        "payload": json_trees,
    },
)


@settings(max_examples=300, deadline=None)
@given(event_fields)
def test_any_json_event_is_an_event_or_an_event_error(fields: dict) -> None:
    _event_is_valid(json.dumps(fields))  # json.dumps writes NaN and Infinity as Python does


# --- device reports (shadow `reported.connectivity`) ----------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        '{"state": {"reported": {"connectivity": {"region": "r", "epoch": 1e400}}}}',
        '{"state": {"reported": {"connectivity": {"region": "r", "epoch": NaN}}}}',
        '{"state": {"reported": {"connectivity": {"region": "r", "epoch": ' + "9" * 5000 + "}}}}",
        '{"state": {"reported": {"connectivity": {"region": "r", "epoch": "' + "9" * 5000 + '"}}}}',
        '{"state": {"reported": {"connectivity": {"region": "r", "epoch": ' + DEEP + "}}}}",
        '{"state": {"reported": {"connectivity": {"region": ["r"], "epoch": 9}}}}',
        '{"state": {"reported": {"connectivity": {"region": "r"}}},'
        ' "metadata": {"reported": {"connectivity": {"region": {"timestamp": 1e400}}}}}',
    ],
    ids=lambda p: p[:60],
)
def test_a_report_of_no_real_epoch_confirms_nothing_and_is_counted(payload: str) -> None:
    before = _unreadable_reports()
    report = DeviceReport.parse(payload)
    assert not report.confirms("r", 1) and not report.confirms("r", 1, fresh_since=0.0)
    assert _unreadable_reports() == before + 1


def test_a_device_that_never_reported_is_no_bad_input() -> None:
    before = _unreadable_reports()
    assert DeviceReport.parse('{"state": {"reported": {"temp": 20}}}') == DeviceReport()
    assert _unreadable_reports() == before


def _unreadable_reports() -> float:
    labels = {"source": "device_report", "reason": "unreadable"}
    return REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) or 0


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=100),
        st.text(max_size=100),
        json_trees.map(json.dumps),
        st.builds(
            lambda conn, meta: json.dumps(
                {
                    "state": {"reported": {"connectivity": conn}},
                    "metadata": {"reported": {"connectivity": meta}},
                }
            ),
            st.fixed_dictionaries(
                {}, optional={"region": st.just("r") | json_trees, "epoch": numbers | json_trees}
            ),
            st.fixed_dictionaries({}, optional={"region": st.fixed_dictionaries({"timestamp": numbers})})
            | json_trees,
        ),
    )
)
def test_any_shadow_document_is_a_report(payload: str | bytes) -> None:
    report = DeviceReport.parse(payload)
    assert report.region is None or isinstance(report.region, str)
    assert isinstance(report.epoch, int) and -1 <= report.epoch < 2**63
    assert isinstance(report.reported_at, float) and math.isfinite(report.reported_at)


# --- the deployment config -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["deployment", "regions", "fleet", "health", "cutover", "quotas", "local", "x"]),
        json_trees,
        max_size=5,
    )
)
def test_any_tree_is_a_config_or_a_config_error(raw: dict) -> None:
    try:
        parse_config(raw, need_ca=False)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) for p in e.problems)


valid_sections = {
    "deployment": {"name": "fleet", "mode": "active-passive", "ca_certificate": "ca.pem"},
    "regions": {"us-east-1": {"role": "primary"}, "us-west-2": {"role": "standby"}},
    "fleet": {"thing_group": "fleet"},
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["health", "cutover", "failover", "replication", "quotas", "local"]),
    st.dictionaries(
        st.sampled_from(
            [
                "interval_seconds",
                "probe_timeout_seconds",
                "canary_size",
                "max_wave_size",
                "wave_growth",
                "verify_timeout_seconds",
                "verify_poll_seconds",
                "cooldown_minutes",
                "min_interval_minutes",
                "reconcile_interval_minutes",
                "default_rps",
                "temporal_port",
            ]
        ),
        numbers,
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(["ListThings", "CreateJob"]), numbers, max_size=2),
)
def test_any_number_in_a_policy_is_a_usable_value_or_a_config_error(
    section: str, values: dict, rates: dict
) -> None:
    raw = {**valid_sections, section: values, "quotas": {"per_api": rates}}
    if section == "quotas":
        raw["quotas"] = {**values, "per_api": rates}
    try:
        cfg = parse_config(raw, need_ca=False)
    except ConfigError:
        return
    durations = [
        dt.timedelta(seconds=cfg.health.interval_seconds),
        dt.timedelta(seconds=cfg.cutover.verify_timeout_seconds + 300),
        dt.timedelta(minutes=cfg.cutover.cooldown_minutes),
        dt.timedelta(minutes=cfg.failover.min_interval_minutes),
        dt.timedelta(minutes=cfg.replication.reconcile_interval_minutes),
    ]
    assert all(d <= dt.timedelta(days=365) for d in durations)
    assert all(0 < r < math.inf for r in [cfg.quotas.default_rps, *cfg.quotas.per_api.values()])
    assert cfg.cutover.canary_size <= cfg.cutover.max_wave_size
