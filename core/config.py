"""Deployment configuration: one TOML file per deployment, validated up front.

Every problem is reported at once, each with the field it is about and a hint to fix it, so an
operator fixes a config in one pass instead of one error per run.
"""

from __future__ import annotations

import os
import tomllib
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import boto3
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.metrics import BAD_INPUT

DEFAULT_CONFIG = Path("deploy/local/deployment.toml")
CONFIG_ENV = "IOTFAILOVER_CONFIG"  # the deployment config of every entry point when --config is not given
STATE_DIR_ENV = "IOTFAILOVER_STATE_DIR"  # wins over [local] state_dir: a container's writable volume


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists every reason with its field.

    Every one is counted in iotfailover_bad_input_total{source="config"} as it is raised.
    """

    def __init__(self, path: Path | str, problems: list[str], reason: str = "invalid"):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))
        BAD_INPUT.labels(source="config", reason=reason).inc()

    def render(self) -> str:
        lines = [f"Invalid deployment config {self.path}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class _Strict(BaseModel):
    # No `inf`/`nan` (TOML has both): a timer or a timedelta of them overflows inside a workflow.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds keep every duration within a timedelta and a Temporal timer, far above any sane value.
_MAX_SECONDS = 7 * 24 * 3600
_MAX_MINUTES = 30 * 24 * 60
_MAX_RPS = 100_000
Port = Annotated[int, Field(ge=1, le=65535)]
Rate = Annotated[float, Field(gt=0, le=_MAX_RPS)]


def _cross_field(rule: bool, field: str, message: str) -> None:
    """A rule between two fields of a section, named by its first field (see _pydantic_problems)."""
    if not rule:
        raise ValueError(f"{field}: {message}")


class RegionConfig(_Strict):
    """One region of a deployment; `endpoint_url` set means the local emulator, not AWS."""

    name: str = ""
    role: Literal["primary", "standby", "peer"]
    role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    # A shared secret of the role's trust policy (NoEcho in the template): never serialized, so a
    # config sent to a workflow keeps it out of history; workers use their own copy from the file.
    external_id: str | None = Field(default=None, min_length=2, max_length=1224, exclude=True, repr=False)
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    bootstrap_url: str | None = Field(default=None, pattern=r"^https?://")
    iot_endpoint: str | None = None  # the device endpoint; discovered with DescribeEndpoint when unset


class FleetConfig(_Strict):
    thing_group: str = Field(min_length=1, max_length=128)
    policy_name: str = Field(default="fleet-device-policy", min_length=1)
    thing_type: str | None = None
    application: str = Field(default="app", pattern=r"^[A-Za-z0-9_-]+$")


class HealthPolicy(_Strict):
    interval_seconds: float = Field(default=10, gt=0, le=3600)
    probe_timeout_seconds: float = Field(default=5, gt=0, le=300)
    unhealthy_after: int = Field(default=3, ge=1, le=1000)
    healthy_after: int = Field(default=3, ge=1, le=1000)
    degraded_latency_ms: float = Field(default=800, gt=0, le=300_000)
    canary_thing: str = "iotfailover-canary"
    heartbeat_sample: int = Field(default=50, ge=0, le=10_000)
    heartbeat_fresh_seconds: float = Field(default=120, gt=0, le=_MAX_SECONDS)
    min_fresh_share: float = Field(default=0.5, ge=0, le=1)


class BlockedWindow(_Strict):
    """A daily UTC window in which no automatic failover starts (e.g. a change freeze)."""

    start: time
    end: time


class CutoverPolicy(_Strict):
    approval: Literal["none", "canary", "every-wave"] = "none"
    canary_size: int = Field(default=5, ge=1)
    wave_growth: float = Field(default=4, ge=1, le=1000)
    max_wave_size: int = Field(default=5000, ge=1, le=10_000_000)
    rollout_per_minute: int = Field(default=1000, ge=1, le=1000)
    abort_failure_percent: float = Field(default=20, gt=0, le=100)
    wave_success_percent: float = Field(default=95, gt=0, le=100)
    in_progress_timeout_minutes: int = Field(default=10, ge=1, le=10080)
    verify_timeout_seconds: float = Field(default=300, gt=0, le=_MAX_SECONDS)
    verify_poll_seconds: float = Field(default=5, gt=0, le=3600)
    # also require fleet indexing to see a confirmed device connected in the target now: catches devices
    # that report there, then are dropped (a policy that refuses their publishes). Needs connectivity
    # indexing (thingConnectivityIndexingMode=STATUS) in every region; leave off for devices that sleep.
    verify_connected: bool = False
    cooldown_minutes: float = Field(default=10, ge=0, le=_MAX_MINUTES)

    @model_validator(mode="after")
    def _consistent(self) -> CutoverPolicy:
        _cross_field(
            self.canary_size <= self.max_wave_size,
            "canary_size",
            f"{self.canary_size} is larger than max_wave_size {self.max_wave_size} "
            "(hint: the canary is the first wave; lower canary_size or raise max_wave_size)",
        )
        _cross_field(
            self.verify_poll_seconds <= self.verify_timeout_seconds,
            "verify_poll_seconds",
            f"{self.verify_poll_seconds:g} is longer than verify_timeout_seconds {self.verify_timeout_seconds:g} "
            "(hint: a wave polls its devices several times before it times out)",
        )
        return self


class FailoverPolicy(_Strict):
    automatic: bool = True
    standby_order: list[str] = []
    min_interval_minutes: float = Field(default=30, ge=0, le=_MAX_MINUTES)
    max_per_day: int = Field(default=2, ge=0, le=1000)
    blocked_windows: list[BlockedWindow] = []
    failback_offer_after_minutes: float = Field(default=10, ge=0, le=_MAX_MINUTES)


class ReplicationPolicy(_Strict):
    reconcile_interval_minutes: float = Field(default=15, gt=0, le=_MAX_MINUTES)
    allow_register_without_ca: bool = False
    events_queue: str = "iotfailover-registry-events"
    ledger_table: str = "iotfailover-replication-ledger"  # what the replicator created, per region


class Quotas(_Strict):
    """Requests per second per API, below the account's AWS IoT quotas, and the account's device
    connect rate (which the controller does not spend, but a migration's waves are bound by)."""

    default_rps: Rate = 20
    # AWS IoT Core's "Connect requests per second per account": 3,000 in the large regions, 500 in
    # others (Service Quotas, "Connect requests per second"); the lower figure unless you know yours.
    connects_per_second: Rate = 500
    per_api: dict[str, Rate] = {
        "CreateThing": 100,
        "UpdateThing": 100,
        "DeleteThing": 100,
        "ListThings": 10,
        "ListThingsInThingGroup": 10,
        "DescribeThing": 350,
        "RegisterCertificate": 10,
        "AttachPolicy": 15,
        "AttachThingPrincipal": 100,
        "CreateJob": 10,
        "AddThingToThingGroup": 100,
        "GetThingShadow": 400,
        "UpdateThingShadow": 400,
    }


class LocalStack(_Strict):
    """Where the local rehearsal stack listens; ignored against AWS."""

    state_dir: str = ".local"
    temporal_port: Port = 7233
    temporal_ui_port: Port = 8233
    worker_metrics_port: Port = 9464
    simulator_metrics_port: Port = 9466  # 9465 is the worker's Temporal SDK metrics


LOCAL_UI_URL = "http://127.0.0.1:8233"  # the local dev server's UI


class TemporalConfig(_Strict):
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "iot-failover"
    ui_url: str = LOCAL_UI_URL  # Temporal Cloud's is used when the address is Cloud's and this is left


class DeploymentConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    mode: Literal["active-passive", "active-active"]
    ca_certificate: Path
    bootstrap_table: str = "iotfailover-bootstrap"
    claims_table: str = "iotfailover-claims"
    routing_table: str = "iotfailover-routing"
    dns_record: str | None = None
    hosted_zone_id: str | None = None
    regions: dict[str, RegionConfig]
    fleet: FleetConfig
    health: HealthPolicy = HealthPolicy()
    cutover: CutoverPolicy = CutoverPolicy()
    failover: FailoverPolicy = FailoverPolicy()
    replication: ReplicationPolicy = ReplicationPolicy()
    quotas: Quotas = Quotas()
    temporal: TemporalConfig = TemporalConfig()
    local: LocalStack = LocalStack()
    source_path: str = ""

    @model_validator(mode="before")
    @classmethod
    def _name_regions(cls, data: Any) -> Any:
        regions = data.get("regions") if isinstance(data, dict) else None
        if isinstance(regions, dict):
            data["regions"] = {
                k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in regions.items()
            }
        return data

    @property
    def primary(self) -> str:
        """The active region in active/passive; the first peer in active/active."""
        for name, r in self.regions.items():
            if r.role == "primary":
                return name
        return next(iter(self.regions))

    @property
    def region_names(self) -> list[str]:
        return list(self.regions)

    def standbys(self) -> list[str]:
        """Failover candidates in the configured order, then any others."""
        others = [r for r in self.regions if r != self.primary]
        ordered = [r for r in self.failover.standby_order if r in others]
        return ordered + [r for r in others if r not in ordered]

    def ca_pem(self) -> str:
        return self.ca_certificate.read_text()

    @property
    def is_local(self) -> bool:
        return all(r.endpoint_url for r in self.regions.values())

    @property
    def state_dir(self) -> Path:
        """Where the process writes (drill reports; the local stack's state): IOTFAILOVER_STATE_DIR,
        else `[local] state_dir` relative to the repository holding the config."""
        if os.environ.get(STATE_DIR_ENV):
            return Path(os.environ[STATE_DIR_ENV])
        base = Path(self.source_path).parent if self.source_path else Path.cwd()
        path = Path(self.local.state_dir)
        return path if path.is_absolute() else (_repo_root(base) / path)


def _repo_root(start: Path) -> Path:
    for p in [start.resolve(), *start.resolve().parents]:
        if (p / "pyproject.toml").exists():
            return p
    return start.resolve()


_FIELD_HINTS = {
    "name": "use lowercase letters, digits and '-', e.g. name = \"fleet-eu\"",
    "mode": 'use "active-passive" or "active-active"',
    "role": 'use "primary" or "standby" (active-passive) or "peer" (active-active)',
    "role_arn": "a full IAM role ARN, e.g. arn:aws:iam::123456789012:role/iotfailover-controller",
    "endpoint_url": "an http(s) URL of the region's emulator, e.g. http://127.0.0.1:4566",
}


def _known_regions() -> set[str]:
    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        regions |= set(session.get_available_regions("iot", partition_name=partition))
    return regions


def _semantic_problems(cfg: DeploymentConfig, need_ca: bool) -> list[str]:
    problems: list[str] = []
    known = _known_regions()
    for name in cfg.regions:
        if name not in known:
            problems.append(
                f"regions.{name}: unknown AWS IoT region '{name}' "
                f"(hint: one of {', '.join(sorted(known)[:6])}, ...)"
            )
    if len(cfg.regions) < 2:
        problems.append(
            "regions: a deployment needs at least two regions to fail over between "
            '(hint: add a [regions.<name>] table with role = "standby")'
        )
    roles = [r.role for r in cfg.regions.values()]
    if cfg.mode == "active-passive":
        if roles.count("primary") != 1:
            problems.append(
                f'regions: active-passive needs exactly one role = "primary", found {roles.count("primary")} '
                "(hint: mark one region primary and the others standby)"
            )
        if "peer" in roles:
            problems.append('regions: role "peer" is for active-active (hint: use "standby")')
    elif set(roles) != {"peer"}:
        problems.append('regions: active-active regions all have role = "peer"')
    for r in cfg.failover.standby_order:
        if r not in cfg.regions:
            problems.append(f"failover.standby_order: '{r}' is not a region of this deployment")
    if need_ca and (problem := _ca_problem(cfg.ca_certificate)):
        problems.append(f"deployment.ca_certificate: {problem}")
    if bool(cfg.dns_record) != bool(cfg.hosted_zone_id):
        problems.append("deployment.dns_record and deployment.hosted_zone_id go together")
    return problems


def _ca_problem(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace") if path.is_file() else None
    except (OSError, ValueError) as e:  # unreadable, or a name the OS refuses (a NUL byte)
        return f"cannot read {str(path)[:200]!r}: {e}"
    if text is None:
        return (
            f"file not found: {path} "
            "(hint: the customer CA's public certificate in PEM; locally `starter.py fleet provision` creates it)"
        )
    if "BEGIN CERTIFICATE" not in text:
        return f"{path} is not a PEM certificate"
    if "PRIVATE KEY" in text:
        return "the file holds a private key; the controller takes the public certificate only"
    return None


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] in ("name", "mode", "ca_certificate", "bootstrap_table", "dns_record"):
            loc = ["deployment", *loc]
        msg = e["msg"]
        if e["type"] == "value_error":  # a _cross_field rule: "<field>: <message>"
            name, _, rest = str(e.get("ctx", {}).get("error", "")).partition(": ")
            if name.isidentifier() and rest:
                loc, msg = [*loc, name], rest
        field = ".".join(loc)
        if e["type"] == "extra_forbidden":
            msg = "unknown setting (hint: check the spelling against deploy/local/deployment.toml)"
        elif e["type"] == "missing":
            msg = "is required"
        hint = _FIELD_HINTS.get(loc[-1]) if loc else None
        if hint and e["type"] not in ("missing", "extra_forbidden"):
            msg += f" (hint: {hint})"
        problems.append(f"{field}: {msg}")
    return problems


def load_config(path: str | Path = DEFAULT_CONFIG, need_ca: bool = True) -> DeploymentConfig:
    """Read and validate a deployment file; raises ConfigError listing every problem.

    `need_ca=False` is for commands that run before the CA exists (`local up`, `fleet provision`).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, ["file not found (hint: pass --config PATH)"], "not_found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"], "bad_toml") from None
    return parse_config(raw, path, need_ca)


_SECTIONS = (
    "regions",
    "fleet",
    "health",
    "cutover",
    "failover",
    "replication",
    "quotas",
    "temporal",
    "local",
)


def parse_config(raw: dict, path: str | Path = "<config>", need_ca: bool = True) -> DeploymentConfig:
    """Validate a parsed config (TOML tables); raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            path, ["the config must be a TOML table of sections ([deployment], [regions.<name>], ...)"]
        )
    problems: list[str] = []
    data = raw.get("deployment", {})
    if not isinstance(data, dict):
        problems.append("deployment: must be a table (hint: [deployment] with name, mode and ca_certificate)")
        data = {}
    data = dict(data)
    if isinstance(data.get("ca_certificate"), str) and path != "<config>":
        ca = Path(data["ca_certificate"])
        data["ca_certificate"] = str(ca if ca.is_absolute() else Path(path).parent / ca)
    for section, value in raw.items():
        if section in _SECTIONS:
            data[section] = value
        elif section != "deployment":
            problems.append(f"{section}: unknown section (hint: one of [deployment], {', '.join(_SECTIONS)})")
    data["source_path"] = str(path)
    try:
        cfg = DeploymentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, problems + _pydantic_problems(e)) from None
    problems += _semantic_problems(cfg, need_ca)
    if problems:
        raise ConfigError(path, problems)
    return cfg
