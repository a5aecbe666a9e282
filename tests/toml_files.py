"""Deployment files for entry points that take --config: one renderer, so every test writes TOML the
same way (strings escaped, nested tables named in full)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import DeploymentConfig


def render(data: dict[str, Any], prefix: str = "") -> str:
    """Nested dicts as TOML tables; scalars and lists as JSON values, which TOML reads the same."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix and scalars else []
    out += [f"{k} = {json.dumps(v if not isinstance(v, Path) else str(v))}" for k, v in scalars.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(render(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data))
    return path


def deployment_data(cfg: DeploymentConfig, bootstrap_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """`cfg` as the tables of a deployment file (what the tests' configs set; defaults left out)."""
    regions: dict[str, Any] = {}
    for name, r in cfg.regions.items():
        table = {"role": r.role, "endpoint_url": r.endpoint_url}
        table |= {k: getattr(r, k) for k in ("role_arn", "external_id", "iot_endpoint") if getattr(r, k)}
        if bootstrap_urls and name in bootstrap_urls:
            table["bootstrap_url"] = bootstrap_urls[name]
        regions[name] = table
    return {
        "deployment": {
            "name": cfg.name,
            "mode": cfg.mode,
            "ca_certificate": str(cfg.ca_certificate),
            "bootstrap_table": cfg.bootstrap_table,
            "routing_table": cfg.routing_table,
        },
        "regions": regions,
        "fleet": {
            "thing_group": cfg.fleet.thing_group,
            "policy_name": cfg.fleet.policy_name,
            "application": cfg.fleet.application,
        },
        "replication": {"reconcile_interval_minutes": cfg.replication.reconcile_interval_minutes},
    }


def e2e_regions(emulators: dict[str, str], bootstrap_ports: dict[str, int]) -> dict[str, Any]:
    """The two rehearsal regions of the e2e deployments: primary east, standby west, each with its
    emulator, its bootstrap service and an ATS-style device endpoint."""
    roles = (("us-east-1", "primary"), ("us-west-2", "standby"))
    return {
        region: {
            "role": role,
            "endpoint_url": emulators[region],
            "bootstrap_url": f"http://127.0.0.1:{bootstrap_ports[region]}",
            "iot_endpoint": f"e2e-ats.iot.{region}.amazonaws.com",
        }
        for region, role in roles
    }
