"""The invariants a run must hold, checked over what it recorded (plain JSON, see RunRecord).

Each check returns its violations, earliest first; a run holds when none fires. The bounds are
arguments so the unit tests can show each check firing on a small synthetic record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from core.models import CutoverResultKind

ENDED = set(get_args(CutoverResultKind))  # how a cutover may end


@dataclass
class Violation:
    invariant: str
    at: float | None  # seconds into the run, when the evidence is a sample
    evidence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Bounds:
    split_seconds: float = 10.0  # two regions may each name themselves primary this long (a flip's writes)
    disagree_seconds: float = 30.0  # regions may answer a device differently this long (a flip on its way)
    state_grace_seconds: float = 15.0  # after a worker restart, `state` may stay unanswered this long
    task_failures: int = 3  # WorkflowTaskFailed events in one workflow that count as "over and over"


@dataclass
class RunRecord:
    """What a run leaves for the checker (see chaos/run.py for how each part is gathered)."""

    samples: list[dict[str, Any]] = field(default_factory=list)  # chaos.sampler.Sample.as_dict()
    bursts: list[dict[str, Any]] = field(default_factory=list)  # {at, started: [cutover ids], refused}
    valid_cutover: dict[str, Any] = field(default_factory=dict)  # {started: id | None, tries: [...]}
    cutovers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {status, result}
    workflows: list[dict[str, Any]] = field(default_factory=list)  # {id, status, failure, task_failures}
    devices: dict[str, list] = field(default_factory=dict)  # thing -> [state, region] after settling
    health: dict[str, str] = field(default_factory=dict)  # region -> state, as the entity sees it


def single_primary(samples: list[dict[str, Any]], bounds: Bounds) -> list[Violation]:
    """Never two regions primary for one device, as the regions that answer tell it:
    - two answers of the same epoch never name different primaries (a broken fence);
    - two regions never each name themselves primary longer than `split_seconds` (a split brain:
      a device booting from either goes home to a different region; a flip's writes to the
      regions, one after the other, take a second or two);
    - answers of different epochs disagree at most `disagree_seconds` (a flip or a catch-up on its
      way) and not at all after settling.
    A region that cannot be read is left out (devices cannot read it either); it neither ends nor
    starts a disagreement, so an outage in the middle of one does not reset its clock."""
    out: list[Violation] = []
    since: dict[tuple[str, str], float] = {}  # (kind, thing) -> first sample of the current one
    tabled = [s for s in samples if s["tables"]]
    for i, s in enumerate(tabled):
        tables = {r: t for r, t in s["tables"].items() if t is not None}
        if len(tables) < 2:
            continue
        for thing in sorted({th for t in tables.values() for th in t}):
            answers = {r: tuple(t[thing]) for r, t in tables.items() if thing in t}
            by_epoch: dict[int, set[str]] = {}
            for epoch, primary in answers.values():
                by_epoch.setdefault(epoch, set()).add(primary)
            split = [e for e, ps in by_epoch.items() if len(ps) > 1]
            if split:
                out.append(Violation("single_primary", s["t"], f"{thing}: same epoch {split[0]}, {answers}"))
            selves = sorted(r for r, (_, p) in answers.items() if p == r)
            kinds = {
                "split": len(selves) > 1,
                "disagree": len({p for _, p in answers.values()}) > 1,
            }
            for kind, on in kinds.items():
                if not on:
                    since.pop((kind, thing), None)
                    continue
                start = since.setdefault((kind, thing), s["t"])
                limit = bounds.split_seconds if kind == "split" else bounds.disagree_seconds
                if s["t"] - start > limit:
                    what = (
                        f"{' and '.join(selves)} each name themselves primary"
                        if kind == "split"
                        else "regions disagree"
                    )
                    out.append(
                        Violation(
                            "single_primary",
                            s["t"],
                            f"{thing}: {what} for {s['t'] - start:.1f}s since t={start:g} (> {limit:g}s): {answers}",
                        )
                    )
                    since[(kind, thing)] = s["t"]  # a long one is reported once per window, not every second
            if kinds["disagree"] and i == len(tabled) - 1 and s["phase"] == "settle":
                out.append(
                    Violation("single_primary", s["t"], f"{thing}: still disagree after settling: {answers}")
                )
    return out


def epochs_grow(samples: list[dict[str, Any]]) -> list[Violation]:
    """No region's answer for a device, and not the entity's epoch, ever goes back."""
    out: list[Violation] = []
    seen: dict[tuple[str, str], int] = {}
    entity = None
    for s in samples:
        for region, table in s["tables"].items():
            for thing, (epoch, _) in (table or {}).items():
                before = seen.get((region, thing))
                if before is not None and epoch < before:
                    out.append(
                        Violation(
                            "epochs_grow", s["t"], f"{region} answers {thing} epoch {epoch} after {before}"
                        )
                    )
                seen[(region, thing)] = max(epoch, before or 0)
        if s["state"] is not None:
            epoch = s["state"]["epoch"]
            if entity is not None and epoch < entity:
                out.append(
                    Violation("epochs_grow", s["t"], f"the entity's epoch went from {entity} to {epoch}")
                )
            entity = max(epoch, entity or 0)
    return out


def state_answers(samples: list[dict[str, Any]], bounds: Bounds) -> list[Violation]:
    """The entity answers `state` whenever a worker runs (a query needs one), but for a grace after
    a restart while the worker catches up."""
    out: list[Violation] = []
    worker_back = None  # when the worker last came back
    was_up = True
    for s in samples:
        if s["worker_up"] and not was_up:
            worker_back = s["t"]
        was_up = s["worker_up"]
        in_grace = worker_back is not None and s["t"] - worker_back < bounds.state_grace_seconds
        if s.get("asked_state", True) and s["state"] is None and s["worker_up"] and not in_grace:
            out.append(Violation("state_answers", s["t"], f"`state` not answered: {s['state_error']}"))
    return out


def one_cutover_at_a_time(bursts: list[dict[str, Any]]) -> list[Violation]:
    """Concurrent requests start at most one cutover."""
    return [
        Violation("one_cutover_at_a_time", b["at"], f"concurrent requests started {b['started']}")
        for b in bursts
        if len(b["started"]) > 1
    ]


def valid_cutover_accepted(valid: dict[str, Any]) -> list[Violation]:
    """Once faults stop, a valid cutover (to the healthy other region) is accepted within the bound."""
    if valid.get("started"):
        return []
    tries = valid.get("tries", [])
    why = f"refused until the bound: {tries[-3:]}" if tries else "never asked: the settle bound ran out first"
    return [Violation("valid_cutover_accepted", None, why)]


def cutovers_end(cutovers: dict[str, dict[str, Any]]) -> list[Violation]:
    """Every cutover ended, as a completed workflow with one of the results, within the settle bound."""
    return [
        Violation("cutovers_end", None, f"{cid}: status {c['status']}, result {c.get('result')}")
        for cid, c in sorted(cutovers.items())
        if c["status"] != "COMPLETED" or c.get("result") not in ENDED
    ]


def workflows_sound(workflows: list[dict[str, Any]], bounds: Bounds) -> list[Violation]:
    """No workflow failed with anything but an application error; none fails its tasks over and over."""
    out = []
    for w in workflows:
        if w["status"] == "FAILED" and w.get("failure") != "ApplicationError":
            out.append(
                Violation(
                    "workflows_sound", None, f"{w['id']} failed with {w.get('failure')}: {w.get('message')}"
                )
            )
        if w.get("task_failures", 0) >= bounds.task_failures:
            out.append(
                Violation(
                    "workflows_sound",
                    None,
                    f"{w['id']}: {w['task_failures']} workflow tasks failed: {w.get('task_failure_message', '')}",
                )
            )
    return out


def devices_served(devices: dict[str, list], health: dict[str, str]) -> list[Violation]:
    """After settling every device is connected to a region the entity holds Healthy."""
    bad = {
        t: (st, r)
        for t, (st, r) in sorted(devices.items())
        if st != "connected" or health.get(r) != "Healthy"
    }
    if not bad:
        return []
    return [
        Violation(
            "devices_served",
            None,
            f"{len(bad)} devices not served by a Healthy region: {bad}; health {health}",
        )
    ]


def check(rec: RunRecord, bounds: Bounds | None = None) -> list[Violation]:
    """Every violation of the run: the sampled ones by time, then those of its end state."""
    b = bounds or Bounds()
    sampled = single_primary(rec.samples, b) + epochs_grow(rec.samples) + state_answers(rec.samples, b)
    sampled += one_cutover_at_a_time(rec.bursts)
    sampled.sort(key=lambda v: v.at or 0.0)
    return (
        sampled
        + valid_cutover_accepted(rec.valid_cutover)
        + cutovers_end(rec.cutovers)
        + workflows_sound(rec.workflows, b)
        + devices_served(rec.devices, rec.health)
    )
