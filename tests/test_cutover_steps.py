"""The cutover's pure pieces: the wave plan and the job document."""

from __future__ import annotations

import re

import pytest

from core.device_report import DeviceReport
from workflows.cutover_steps import JOB_ID_MAX, bootstrap_order, job_id, wave_sizes


@pytest.mark.parametrize(
    ("total", "canary", "growth", "cap", "expected_head"),
    [
        (200, 5, 4, 5000, [5, 20, 80, 320]),
        (100_000, 5, 4, 5000, [5, 20, 80, 320, 1280, 5000]),
        (3, 5, 4, 100, [5]),
        (10, 1, 1, 100, [1, 2, 3, 4]),
    ],
)
def test_waves_start_small_grow_and_cover_the_scope(total, canary, growth, cap, expected_head) -> None:
    sizes = wave_sizes(total, canary, growth, cap)
    assert sizes[: len(expected_head)] == expected_head
    assert sum(sizes) >= total
    assert max(sizes) <= cap


def test_wave_count_stays_small_for_a_large_fleet() -> None:
    # history grows with waves, not devices: 100k devices fit in a few dozen waves
    assert len(wave_sizes(100_000, 5, 4, 5000)) < 30


def test_bootstrap_order_puts_the_new_primary_first() -> None:
    assert bootstrap_order(["us-east-1", "us-west-2", "eu-west-1"], "us-west-2") == [
        "us-west-2",
        "us-east-1",
        "eu-west-1",
    ]


def test_connectivity_is_read_from_the_device_report() -> None:
    doc = (
        b'{"state": {"reported": {"connectivity": {"region": "us-west-2", "epoch": 3}}},'
        b' "metadata": {"reported": {"connectivity": {"region": {"timestamp": 100}, "epoch": {"timestamp": 120}}}}}'
    )
    report = DeviceReport.parse(doc)
    assert report.reported_at == 120
    assert report.confirms("us-west-2", 3) and report.confirms("us-west-2", 2)
    assert not report.confirms("us-west-2", 4) and not report.confirms("us-east-1", 3)
    # emergency: a device that failed over on its own keeps its old epoch but is heard from in the target
    assert report.confirms("us-west-2", 9, fresh_since=110) and not report.confirms(
        "us-west-2", 9, fresh_since=130
    )
    assert DeviceReport.parse(b"not json") == DeviceReport() and not DeviceReport().confirms("r", 1)


def test_job_ids_fit_aws_limits_and_stay_distinct_for_long_deployment_names() -> None:
    """Deployment names may have 63 characters; AWS IoT job IDs at most 64 (issue 13, item 20)."""
    short = job_id("demo", 3, "w0")
    assert short == "demo-3-w0"
    a, b = "a" * 62 + "x", "a" * 62 + "y"
    for name in (a, b):
        for wave in ("0", "12", "stragglers", "rollback"):
            jid = job_id(name, 123456, wave)
            assert len(jid) <= JOB_ID_MAX and re.fullmatch(r"[a-zA-Z0-9_-]+", jid), jid
            assert jid.endswith(f"-123456-{wave}")
    assert job_id(a, 7, "0") != job_id(b, 7, "0")
    assert job_id(a, 7, "0") == job_id(a, 7, "0")  # deterministic: a retry finds its job


def test_report_times_are_seconds_milliseconds_or_iso() -> None:
    from core.device_report import seconds

    assert seconds(1_700_000_000) == 1_700_000_000.0
    assert seconds(1_700_000_000_500) == 1_700_000_000.5  # milliseconds
    assert seconds("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert seconds("soon") is None and seconds(None) is None and seconds(True) is None
    report = DeviceReport(region="r", epoch=1, since=1_700_000_000_000, reported_at=1_700_000_100.0)
    assert report.since_seconds == 1_700_000_000.0 and report.last_heard == 1_700_000_100.0
    assert DeviceReport(region="r", since="2023-11-14T22:13:20Z").last_heard == 1_700_000_000.0
    assert DeviceReport().last_heard is None
