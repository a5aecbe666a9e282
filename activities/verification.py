"""Verification of where a wave's devices are: each device's classic shadow in the target, whose
`reported.connectivity` says where it really is and under which epoch (and, with
`cutover.verify_connected`, fleet indexing's presence). A mixin of JobActivities, whose shadow reads
and group writes it uses.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from temporalio import activity

from activities.context import Deployments
from core.aws import AwsClients, all_items, group_member_pages
from core.device_report import DeviceReport
from core.errors import aws_activity


@dataclass
class VerifyInput:
    deployment: str
    list_region: str
    list_group: str
    target: str
    epoch: int
    timeout_seconds: float
    poll_seconds: float = 5
    stragglers_group: str | None = None  # on the last pass, put unconfirmed devices here (list_region)
    fresh_since: float | None = None  # emergency: also confirm devices heard from in the target since then


def _confirmed_before() -> list[str]:
    """The devices an earlier attempt of this verification confirmed (its last heartbeat)."""
    details = activity.info().heartbeat_details if activity.in_activity() else ()
    last = details[0] if details else None
    return list(last.get("confirmed", [])) if isinstance(last, dict) else []


SEARCH_NAMES = 25  # thing names per fleet-indexing query: keeps the query string short


def disconnected(iot: Any, things: list[str]) -> set[str]:
    """Those of `things` that fleet indexing sees disconnected (or never connected) in this region."""
    out: set[str] = set()
    for i in range(0, len(things), SEARCH_NAMES):
        names = " OR ".join(f"thingName:{t}" for t in things[i : i + SEARCH_NAMES])
        query = f"connectivity.connected:false AND ({names})"
        out.update(t["thingName"] for t in all_items(iot, "search_index", "things", queryString=query))
    return out


@dataclass
class VerifyOutcome:
    total: int
    confirmed: int
    pending: int
    pending_sample: list[str]
    stragglers_arn: str | None = None


class Verification:
    deployments: Deployments
    max_workers: int

    def _report(self, deployment: str, region: str, thing: str) -> DeviceReport:
        raise NotImplementedError  # JobActivities reads the shadow

    def _ensure_group(self, deployment: str, region: str, name: str) -> str:
        raise NotImplementedError  # JobActivities creates the group

    @activity.defn
    @aws_activity(lambda inp: (f"verifying devices of {inp.list_group}", inp.target))
    def verify_devices(self, inp: VerifyInput) -> VerifyOutcome:
        """Count the group's devices whose shadow in the target says they are there under the epoch
        (and, with `cutover.verify_connected`, whom fleet indexing sees connected there now).

        Polls until every device is confirmed or the timeout passes; a device confirmed once is not
        read again (a 10,000-device wave would otherwise cost a shadow read per device per round),
        and the heartbeat carries the confirmed ones so a retried attempt does not read them either.
        On the last pass, optionally puts the unconfirmed ones into a stragglers group for one more try.
        """
        aws = self.deployments.aws(inp.deployment)
        deadline = time.monotonic() + inp.timeout_seconds
        confirmed_in_order = _confirmed_before()  # the heartbeat's list: appended to, never re-sorted
        confirmed = set(confirmed_in_order)
        while True:
            total, pending = 0, []
            for names in group_member_pages(aws.iot(inp.list_region), inp.list_group):
                total += len(names)
                unknown = [t for t in names if t not in confirmed]
                for t in self._confirmations(aws, inp, unknown):
                    confirmed.add(t)
                    confirmed_in_order.append(t)
                pending += [t for t in unknown if t not in confirmed]
                activity.heartbeat(
                    {"checked": total, "pending": len(pending), "confirmed": confirmed_in_order}
                )
            last = not pending or time.monotonic() > deadline
            if last:
                arn = None
                if pending and inp.stragglers_group:
                    arn = self._ensure_group(inp.deployment, inp.list_region, inp.stragglers_group)
                    iot = aws.iot(inp.list_region)
                    with ThreadPoolExecutor(self.max_workers) as pool:
                        list(
                            pool.map(
                                lambda t, iot=iot: iot.add_thing_to_thing_group(
                                    thingGroupName=inp.stragglers_group, thingName=t
                                ),
                                pending,
                            )
                        )
                return VerifyOutcome(total, total - len(pending), len(pending), sorted(pending)[:20], arn)
            time.sleep(inp.poll_seconds)

    def _confirmations(self, aws: AwsClients, inp: VerifyInput, things: list[str]) -> list[str]:
        """Those of `things` whose shadow in the target confirms them (and, with verify_connected,
        that fleet indexing sees connected there)."""
        if not things:
            return []
        with ThreadPoolExecutor(self.max_workers) as pool:
            reports = list(pool.map(lambda t: self._report(inp.deployment, inp.target, t), things))
        here = [
            t
            for t, r in zip(things, reports, strict=True)
            if r.confirms(inp.target, inp.epoch, inp.fresh_since)
        ]
        if here and self.deployments.config(inp.deployment).cutover.verify_connected:
            offline = disconnected(aws.iot(inp.target), here)
            here = [t for t in here if t not in offline]
        return here
