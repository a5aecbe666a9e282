"""requirements/*.lock pin what `make install`, CI and the worker image install: every dependency of
pyproject.toml, at a version its range allows, each with hashes. A range changed without `make lock`
fails here, not on the next machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile lock."""
    text = (ROOT / "requirements" / lock).read_text()
    out = {}
    for block in re.split(r"\n(?=[a-z0-9])", text):
        head = re.match(r"([a-z0-9][a-z0-9._-]*)==(\S+)", block)
        if head:
            out[canonical(head[1])] = (head[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def ours(requirements: list[str]) -> list[Requirement]:
    return [r for r in map(Requirement, requirements) if canonical(r.name) != canonical(PROJECT["name"])]


@pytest.mark.parametrize(
    "lock,requirements",
    [
        ("runtime.lock", PROJECT["dependencies"]),
        ("dev.lock", PROJECT["dependencies"] + sum(PROJECT["optional-dependencies"].values(), [])),
    ],
)
def test_the_lock_pins_every_dependency_within_its_range_with_hashes(
    lock: str, requirements: list[str]
) -> None:
    pinned = entries(lock)
    for req in ours(requirements):
        name = canonical(req.name)
        assert name in pinned, f"{req} is not in requirements/{lock}: run `make lock`"
        assert pinned[name][0] in req.specifier, f"{name}=={pinned[name][0]} outside {req}: run `make lock`"
    assert all(hashes for _, hashes in pinned.values()), "every pin carries its hashes"
    assert canonical(PROJECT["name"]) not in pinned, (
        "the project itself is installed with -e, not from the lock"
    )


def test_the_worker_image_runs_the_versions_the_tests_ran() -> None:
    dev = entries("dev.lock")
    for name, (version, _) in entries("runtime.lock").items():
        assert dev.get(name, ("absent",))[0] == version, f"{name}: runtime {version}, dev {dev.get(name)}"
