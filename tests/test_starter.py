"""The CLI's shape: `--config` anywhere on the line or from IOTFAILOVER_CONFIG, one exit code per
kind of outcome, and the installed `iotfailover` script being the same CLI."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import starter
from cli import Exit
from rehearsal.processes import free_port
from tests.toml_files import write_toml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.toml", "status"],
        ["status", "--config", "x.toml"],
        ["status", "--config=x.toml"],
        ["cutover", "--to", "us-west-2", "--config", "x.toml"],
    ],
)
def test_config_goes_anywhere_on_the_line(argv: list[str]) -> None:
    args = starter.build_parser().parse_args(starter.config_first(argv))
    assert args.config.endswith("x.toml") and args.command == argv[0 if argv[0] != "--config" else 2]


def test_the_environment_names_the_config_when_no_flag_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTFAILOVER_CONFIG", "/etc/iot-failover/fleet.toml")
    assert starter.build_parser().parse_args(["status"]).config == "/etc/iot-failover/fleet.toml"
    args = starter.build_parser().parse_args(starter.config_first(["status", "--config", "other.toml"]))
    assert args.config == "other.toml"


def test_each_kind_of_outcome_has_its_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    assert starter.main(["status", "--config", str(missing)]) == Exit.CONFIG
    assert "nowhere.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        starter.main(["cutover", "--mode", "sideways"])
    assert usage.value.code == Exit.USAGE
    assert len({Exit.OK, Exit.FAILED, Exit.USAGE, Exit.CONFIG, Exit.REFUSED, Exit.UNREACHABLE}) == 6


def test_the_installed_script_is_the_same_cli() -> None:
    script = shutil.which("iotfailover", path=str(Path(sys.executable).parent))
    assert script, "pip install -e . installs the iotfailover console script (pyproject [project.scripts])"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "preflight" in out.stdout and "--config" in out.stdout


def test_steering_a_cutover_needs_no_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator's laptop holds the deployment file, not the customer CA: approve and cutover get
    past the config and fail only on what they reach (here a Temporal that is not there)."""
    path = write_toml(
        tmp_path / "deployment.toml",
        {
            "deployment": {
                "name": "fleet",
                "mode": "active-passive",
                "ca_certificate": str(tmp_path / "no-ca.pem"),
            },
            "regions": {"us-east-1": {"role": "primary"}, "us-west-2": {"role": "standby"}},
            "fleet": {"thing_group": "fleet"},
            "temporal": {"address": f"127.0.0.1:{free_port()}"},
        },
    )
    for argv in (["approve", "cutover-fleet-3"], ["cutover", "--to", "us-west-2"]):
        assert starter.main([*argv, "--config", str(path)]) == Exit.UNREACHABLE, capsys.readouterr().err


def test_a_dry_run_counts_the_scope_and_prints_the_plan(config, capsys: pytest.CaptureFixture[str]) -> None:
    """`cutover --dry-run` needs neither Temporal nor the CA: a count of the scope and the quotas."""
    from core.aws import AwsClients
    from tests.toml_files import deployment_data

    iot = AwsClients(config).iot("us-east-1")
    iot.create_thing_group(thingGroupName=config.fleet.thing_group)
    for i in range(12):
        iot.create_thing(thingName=f"d-{i}")
        iot.add_thing_to_thing_group(thingGroupName=config.fleet.thing_group, thingName=f"d-{i}")
    path = write_toml(Path(config.ca_certificate).parent / "deployment.toml", deployment_data(config))
    assert starter.main(["cutover", "--to", "us-west-2", "--dry-run", "--config", str(path)]) == Exit.OK
    out = capsys.readouterr().out
    assert "waves for 12 devices" in out and "counted in us-east-1" in out and "nothing was started" in out
    assert out.count(" devices  ") == 2  # the canary of 5, then the other 7


def test_every_flag_and_argument_says_what_it_is_for() -> None:
    missing = []

    def walk(parser, path: list[str]) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(a, argparse._HelpAction) and not a.help:
                missing.append(f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}")

    walk(starter.build_parser(), [])
    assert missing == []


def test_the_same_idea_has_the_same_flag_everywhere() -> None:
    """Regions are --from/--to and a thing group is --scope in every command (older names still parse)."""
    parse = starter.build_parser().parse_args
    parity = parse(["parity", "--from", "us-east-1", "--to", "us-west-2", "--scope", "g"])
    assert (parity.source, parity.target, parity.thing_group) == ("us-east-1", "us-west-2", "g")
    assert parse(["parity", "--source", "us-east-1", "--thing-group", "g"]).thing_group == "g"
    shadows = parse(["shadows", "sync", "--from", "us-east-1", "--to", "us-west-2", "--scope", "g"])
    assert (shadows.source, shadows.target, shadows.group) == ("us-east-1", "us-west-2", "g")
    assert parse(["cutover", "--to", "us-west-2", "--scope", "g"]).scope == "g"
