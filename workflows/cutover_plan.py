"""The cutover's plan at the configured quotas: how many waves, how long each should take, and what
bounds it (pure, so the workflow, `cutover --dry-run` and the tests compute the same plan).

A wave's time is its group filled at AddThingToThingGroup's rate, then its devices told and moved at
the slower of the job's rollout (IoT Jobs notify at most 1,000 devices a minute per job) and the
account's connect rate, then verified: each device's shadow read once at GetThingShadow's rate, plus
a poll interval. Approvals and stragglers are left out: they wait on people and on devices.
"""

from __future__ import annotations

from core.config import CutoverPolicy, Quotas
from core.models import CutoverPlan
from workflows.cutover_steps import wave_sizes


def rate(quotas: Quotas, api: str) -> float:
    return quotas.per_api.get(api, quotas.default_rps)


def plan(devices: int, policy: CutoverPolicy, quotas: Quotas) -> CutoverPlan:
    sizes, covered = [], 0
    for size in wave_sizes(devices, policy.canary_size, policy.wave_growth, policy.max_wave_size):
        if covered >= devices:
            break  # the spare waves for devices added meanwhile take no time when empty
        sizes.append(min(size, devices - covered))
        covered += size
    spent = {"filling the wave groups": 0.0, "verification's shadow reads": 0.0}
    rollout = f"the jobs' rollout ({policy.rollout_per_minute:,}/min)"
    connects = f"device connects ({quotas.connects_per_second:,.0f}/s)"
    spent |= {rollout: 0.0, connects: 0.0}
    seconds = []
    for size in sizes:
        fill = size / rate(quotas, "AddThingToThingGroup")
        notify = size / policy.rollout_per_minute * 60
        connect = size / quotas.connects_per_second
        verify = size / rate(quotas, "GetThingShadow") + policy.verify_poll_seconds
        spent["filling the wave groups"] += fill
        spent[rollout if notify >= connect else connects] += max(notify, connect)
        spent["verification's shadow reads"] += verify
        seconds.append(round(fill + max(notify, connect) + verify, 1))
    bound = max(spent, key=lambda k: spent[k]) if sizes else ""
    return CutoverPlan(devices=devices, waves=sizes, wave_seconds=seconds, bound_by=bound)
