"""The recovery point's arithmetic (activities/recovery_point.py): lost writes, spans, percentiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.recovery_point import (
    DeviceLoss,
    RecoveryPoint,
    RecoveryTally,
    bucket,
    histogram_percentile,
    lost_writes,
)
from activities.shadow_merge import merge_shadow


def _shadow(reported: dict, stamps: dict) -> dict:
    return {
        "state": {"reported": reported},
        "metadata": {"reported": {k: {"timestamp": t} for k, t in stamps.items()}},
    }


def test_lost_writes_are_the_source_leaves_the_standby_lacked_by_the_cut() -> None:
    source = _shadow({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 100, "b": 200, "c": 300, "d": 400})
    standby = _shadow({"a": 1, "b": 1, "c": 9}, {"a": 100, "b": 150, "c": 350})
    lost = lost_writes(merge_shadow(source, standby).stale, as_of=350)
    # a: the standby has it; b: older there; c: newer there; d: written after the cut
    assert [(s.path, s.source_timestamp) for s in lost] == [("reported.b", 200)]
    assert lost_writes(merge_shadow(source, None).stale, as_of=1000)[0].path == "reported.a"
    assert lost_writes(merge_shadow(None, standby).stale, as_of=1000) == []


def test_a_device_that_lost_nothing_counts_as_zero_and_unreadable_ones_apart() -> None:
    tally = RecoveryTally(as_of=1000.0)
    for loss in (
        DeviceLoss(),
        DeviceLoss(oldest=900.0, leaves=2, detail="d1: 2 leaves lost"),
        DeviceLoss(oldest=400.0, leaves=1),
        DeviceLoss(detail="d3: cannot compare: InvalidRequestException", unreadable=True),
    ):
        tally.add(loss)
    point = RecoveryPoint.of(tally, "us-east-1", "us-west-2", "fleet")
    assert (point.devices, point.devices_lost, point.leaves_lost, point.unreadable) == (3, 2, 3, 1)
    assert (point.p50_seconds, point.p95_seconds, point.max_seconds) == (100, 600, 600)
    assert point.sample == ["d1: 2 leaves lost", "d3: cannot compare: InvalidRequestException"]
    empty = RecoveryPoint.of(RecoveryTally(as_of=1.0), "a", "b", "g")
    assert (empty.devices, empty.p50_seconds, empty.max_seconds) == (0, None, None)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


spans = st.lists(st.floats(min_value=0, max_value=3e7, allow_nan=False), min_size=1, max_size=300)


@given(spans, st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_the_histogram_answers_the_nearest_rank_of_the_bucketed_spans(values: list[float], q: float) -> None:
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket(v)] = counts.get(bucket(v), 0) + 1
    assert histogram_percentile(counts, q) == _nearest_rank([bucket(v) for v in values], q)
    exact = _nearest_rank(values, q)
    assert 0 <= exact - histogram_percentile(counts, q) < max(1, exact * 0.01)  # never above, under 1%


@given(spans)
def test_the_tally_stays_small_whatever_the_spread(values: list[float]) -> None:
    tally = RecoveryTally(as_of=4e7)
    for v in values:
        tally.add(DeviceLoss(oldest=4e7 - v, leaves=1))
    assert sum(tally.spans.values()) == len(values) and tally.devices_lost == len(values)
    assert tally.max_seconds == pytest.approx(max(values), abs=1e-6)
    assert all(k < 1000 or len(str(k).rstrip("0")) <= 3 for k in tally.spans)  # 3 significant digits
    assert histogram_percentile(tally.spans, 1.0) <= tally.max_seconds
