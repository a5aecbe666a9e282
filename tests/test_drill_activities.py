"""Pure parts of the drill's activities and CLI: what counts as a held cutover, the drill's input."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from activities.drill import held_wave
from cli import CliError
from cli.drill import drill_input
from core.models import CutoverProgress
from tests.conftest import make_config


def _progress(waiting_for: str | None, result: str | None = None) -> CutoverProgress:
    return CutoverProgress("c-1", "d", "planned", "a", "b", "g", 3, waiting_for=waiting_for, result=result)


def test_only_a_wave_below_its_threshold_is_a_hold() -> None:
    hold = "approval: wave 2 confirmed 3/12, below 95%; send signal approve to go on or abort"
    assert held_wave(_progress(hold)) == "wave 2 confirmed 3/12, below 95%"
    gate = "approval: wave 0 done (4/24 confirmed); send signal approve to start wave 1"
    assert held_wave(_progress(gate)) is None  # the policy's gate: a person asked for it
    assert held_wave(_progress("paused: send signal resume to continue")) is None
    assert held_wave(_progress(hold, result="aborted")) is None and held_wave(None) is None


def test_the_cli_asks_no_approval_and_bounds_every_wait(tmp_path, local_ca) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(local_ca.cert_pem)
    cfg = make_config({"us-east-1": "http://x", "us-west-2": "http://y"}, ca)
    args = argparse.Namespace(kind="planned", scope=None, percent=None)  # what `make demo` passes
    inp = drill_input(cfg, "drill-1", args)
    assert inp.approval == "none" and inp.timeout_seconds >= 900
    args = argparse.Namespace(
        kind="planned", scope=None, percent=5, approval="policy", timeout=timedelta(minutes=90)
    )
    inp = drill_input(cfg, "drill-2", args)
    assert inp.approval is None and inp.timeout_seconds == 5400
    with pytest.raises(CliError, match="--timeout"):
        drill_input(cfg, "d", argparse.Namespace(kind="planned", percent=None, timeout=timedelta(0)))


async def test_abort_cutover_still_takes_the_bare_id_recorded_drills_send() -> None:
    from activities.drill import AbortCutoverInput
    from core.temporal import DATA_CONVERTER

    for sent in ("cutover-demo-3", AbortCutoverInput("cutover-demo-3", "held: wave 0")):
        decoded = await DATA_CONVERTER.decode(await DATA_CONVERTER.encode([sent]), [str | AbortCutoverInput])
        assert decoded == [sent]
