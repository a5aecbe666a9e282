"""What a deployment needs in each region before the controller can act on it, named once so the
region stack (deploy/aws/region.yaml), the local stack and `starter.py preflight` agree."""

from __future__ import annotations

# AWS IoT publishes registry events only for the types enabled in the account's event
# configurations; registry replication's event stream reads these (jobs' events it does not).
REGISTRY_EVENT_TYPES = (
    "THING",
    "THING_TYPE",
    "THING_TYPE_ASSOCIATION",
    "THING_GROUP",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "CERTIFICATE",
    "CA_CERTIFICATE",
    "POLICY",
)
