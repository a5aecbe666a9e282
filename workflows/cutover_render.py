"""What a cutover shows in the Temporal UI's current details: a pure function of its progress."""

from __future__ import annotations

from core.models import CutoverProgress, WaveReport

WAVES_SHOWN = 6


def wave_name(w: WaveReport) -> str:
    if w.kind != "wave":
        return w.kind
    return "canary" if w.index == 0 else f"wave {w.index}"


def details(p: CutoverProgress, paused: bool) -> str:
    """Markdown for `workflow.set_current_details`: phase, what it waits for, the last waves and events."""
    lines = [
        f"**{p.mode} cutover {p.source} → {p.target}** (epoch {p.epoch}, scope {p.scope})",
        f"phase: {p.phase}" + (" (paused)" if paused else ""),
    ]
    if p.takeover:
        lines.append(f"takeover: {p.takeover}")
    if p.waiting_for:
        lines.append(f"waiting for: {p.waiting_for}")
    if p.devices_total:
        lines.append(f"devices: {p.confirmed}/{p.devices_total} confirmed in {p.target}, {p.failed} failed")
    if p.plan and p.plan.waves:
        lines.append(f"plan: {p.plan.brief()}")
        ran = [w for w in p.waves if w.kind == "wave" and w.seconds]
        if ran:
            planned = sum(p.plan.wave_seconds[: len(ran)])
            lines.append(
                f"waves so far: {sum(w.seconds for w in ran) / 60:.1f} min against {planned / 60:.1f} planned"
            )
    for w in p.waves[-WAVES_SHOWN:]:
        lines.append(f"- {wave_name(w)}: {w.confirmed}/{w.size} confirmed, job {w.job_status or 'running'}")
    if p.result:
        lines.append(f"result: {p.result}" + (f" ({p.error})" if p.error else ""))
    lines += [f"> {e}" for e in p.events[-3:]]
    return "\n".join(lines)
