"""What replication reports: a pair's reconcile, a parity check, an event drain.

No `from __future__ import annotations` here: workflows decode these in Temporal's sandbox, where
pydantic cannot resolve a string annotation of a module imported only through another one.
"""

from dataclasses import dataclass, field


@dataclass
class ReconcileResult:
    source: str
    target: str
    applied: dict[str, int] = field(default_factory=dict)  # "kind:operation" -> n
    drift: dict[str, int] = field(default_factory=dict)  # kind -> differences found
    failed: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: str = ""  # "<phase>@<page token>" when a retried attempt continued a checkpoint
    things: int = 0  # the source's own things seen (full reconcile)
    fleet_devices: int = 0  # members of the fleet thing group and its subgroups in the source (full)


@dataclass
class KindCounts:
    missing: int = 0
    different: int = 0
    extra: int = 0  # replicated by us and gone from the source (the reconciler deletes these)
    foreign: int = 0  # only in the target and not ours: reported, not drift


@dataclass
class ParityReport:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    ok: bool = True

    def render(self) -> str:
        scope = f" (thing group {self.thing_group})" if self.thing_group else ""
        lines = [f"parity {self.source} -> {self.target}{scope}: {'OK' if self.ok else 'DRIFT'}"]
        for kind, c in self.kinds.items():
            lines.append(
                f"  {kind:<12} missing {c.missing:<5} different {c.different:<5} extra {c.extra:<5} "
                f"foreign {c.foreign}"
            )
        lines += [f"  - {s}" for s in self.sample]
        return "\n".join(lines)


@dataclass
class DeadLetter:
    region: str
    reason: str
    detail: str
    message_id: str = ""
    at: str = ""


@dataclass
class DrainResult:
    received: int = 0
    applied: int = 0
    ignored: int = 0
    jitr: int = 0
    dead_letter_count: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)  # the first few, with reasons
    lag_seconds: dict[str, float] = field(default_factory=dict)  # target region -> lag
    unreachable: list[str] = field(default_factory=list)  # regions whose queue did not answer
    dead_letters_by_region: dict[str, int] = field(default_factory=dict)  # queue region -> this drain's
    dead_letter_queue_depth: dict[str, int] = field(default_factory=dict)  # region -> waiting in its DLQ
