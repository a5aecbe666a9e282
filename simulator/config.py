"""The simulator's own TOML config: the seed talk's DeviceSimulator settings plus fleet and fault knobs.

It sits beside the deployment config (`simulator.toml`) and reuses its regions, bootstrap URLs, state
folder and metrics port, so the two never disagree about where the emulators and services are.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.config import ConfigError, DeploymentConfig

FaultKind = Literal["never-migrate", "slow", "flaky"]
FILE_NAME = "simulator.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultSettings(_Strict):
    """A share of the fleet misbehaves so drills see stragglers."""

    share: float = Field(0.0, ge=0, le=1)
    kinds: list[FaultKind] = ["never-migrate", "slow", "flaky"]
    slow_ms: int = Field(2000, ge=0)  # added before every action of a slow device
    flaky_error_rate: float = Field(0.3, ge=0, le=1)  # share of a flaky device's calls that fail
    seed: int = 7  # which devices are faulty is reproducible


class MqttSettings(_Strict):
    """How devices reach an MQTT endpoint that is not a rehearsal region (AWS IoT Core)."""

    port: int = Field(8883, ge=1, le=65535)  # 443 negotiates ALPN x-amzn-mqtt-ca
    root_ca_file: Path | None = None  # default: the bootstrap answer's CAs (Amazon's root)
    connect_timeout_seconds: float = Field(10, gt=0)
    request_timeout_seconds: float = Field(10, gt=0)  # a shadow or jobs request without an answer
    max_connecting: int = Field(32, ge=1, le=1024)  # TLS handshakes in flight for the whole process


class SimulatorConfig(_Strict):
    protocol: Literal["local", "mqtt"] = "local"  # mqtt: mutual TLS with each device's certificate
    manifest: Path | None = None  # default: <state>/fleet/manifest.json, written by `fleet provision`
    devices: int = Field(0, ge=0, le=10_000)  # 0: every device of the manifest
    publish_topics: list[str] = ["{sensor}"]
    subscribe_topics: list[str] = ["{configurations}"]
    shadow: bool = True
    keep_alive_seconds: float = Field(30, gt=0)
    telemetry_interval_seconds: float = Field(15, gt=0)
    job_poll_seconds: float = Field(10, gt=0)
    retry_timings_ms: list[int] = Field([250, 500, 1000, 2000, 4000], min_length=1)
    skew_range_ms: int = Field(250, ge=0)
    health_score: int = Field(100, ge=0, le=100)
    bootstrap_urls: list[str] = []  # default: every region's bootstrap_url, primary first
    max_in_flight: int = Field(32, ge=1, le=512)  # concurrent data-plane calls of the whole process
    start_spread_seconds: float = Field(5, ge=0)  # devices boot spread over this window
    status_interval_seconds: float = Field(2, gt=0)
    faults: FaultSettings = FaultSettings()
    mqtt: MqttSettings = MqttSettings()

    @field_validator("publish_topics", "subscribe_topics")
    @classmethod
    def _topics_known(cls, topics: list[str]) -> list[str]:
        for t in topics:
            try:
                t.format(sensor="", configurations="", device="", application="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"topic template {t!r} uses an unknown field {e} "
                    "(hint: {sensor}, {configurations}, {device}, {application})"
                ) from None
        return topics

    def manifest_path(self, cfg: DeploymentConfig) -> Path:
        return self.manifest or cfg.state_dir / "fleet" / "manifest.json"

    def bootstrap_list(self, cfg: DeploymentConfig) -> list[str]:
        """Where devices boot from, in order; a fleet with nowhere to boot from is a config error."""
        order = [cfg.primary, *cfg.standbys()]
        urls = list(self.bootstrap_urls) or [u for r in order if (u := cfg.regions[r].bootstrap_url)]
        if not urls:
            raise ConfigError(
                cfg.source_path,
                [
                    "simulator.bootstrap_urls: the devices have no bootstrap URL (hint: set "
                    "regions.<name>.bootstrap_url in the deployment config, or bootstrap_urls in simulator.toml)"
                ],
            )
        return urls


def load_simulator_config(path: str | Path | None, cfg: DeploymentConfig) -> SimulatorConfig:
    """Read `[simulator]` from `path`, or from simulator.toml beside the deployment config, or defaults."""
    if path is None:
        beside = Path(cfg.source_path).parent / FILE_NAME if cfg.source_path else None
        if beside is None or not beside.is_file():
            return SimulatorConfig()
        path = beside
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text()).get("simulator", {})
    except FileNotFoundError:
        raise ConfigError(path, ["file not found (hint: pass --simulator-config PATH)"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None
    if raw.get("manifest"):
        m = Path(raw["manifest"])
        raw["manifest"] = str(m if m.is_absolute() else path.parent / m)
    root = (raw.get("mqtt") or {}).get("root_ca_file")
    if root and not Path(root).is_absolute():
        raw["mqtt"] = {**raw["mqtt"], "root_ca_file": str(path.parent / root)}
    try:
        return SimulatorConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(["simulator", *(str(p) for p in err["loc"])])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{field}: {msg}")
        raise ConfigError(path, problems) from None
