"""The deployment's CA in every region, as an activity (the certificate engine is replication.certificates)."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity

from activities.context import Deployments
from core.aws import all_items
from core.errors import failing_as
from replication.certificates import register_ca

marker_items = all_items  # the name bench/replication_bench.py pages certificates with


@dataclass
class EnsureCaInput:
    deployment: str


@dataclass
class EnsureCaResult:
    ca_ids: dict[str, str] = field(default_factory=dict)  # region -> CA certificate ID


class CertificateActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    @activity.defn
    def ensure_ca_registered(self, inp: EnsureCaInput) -> EnsureCaResult:
        """Register the deployment CA in every region (idempotent); returns its ID per region."""
        aws = self.deployments.aws(inp.deployment)
        out = EnsureCaResult()
        for region in aws.cfg.region_names:
            with failing_as("registering the CA certificate", region):
                out.ca_ids[region] = register_ca(aws, region)
        return out


def activities(deployments: Deployments) -> list:
    return [CertificateActivities(deployments).ensure_ca_registered]
