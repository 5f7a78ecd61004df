"""The node's one typed config tree, and how it is assembled: preset <- --config file <- flags <- --set.

Each section lives next to the code that owns it (comms.config, serving.config, training.config); this module
only mounts them and turns validation failures into messages that name the field and the value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comms.config import NetworkConfig
from protocols.errors import SwarmError
from serving.config import ServingConfig
from swarm.runtime.arbiter import CoscheduleConfig
from training.config import TrainingConfig
from training.rl_config import RLConfig

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
ROLES = ("serve", "train", "rl")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-:\[\]]+):(?P<port>\d{1,5})$")


class ConfigError(SwarmError):
    """A config file, flag or override is invalid; the message names the field and the value."""


class NodeSection(BaseModel):
    """What this node does and how it is reached by people and programs."""

    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(default_factory=list, description="Roles: serve, train, rl (none: a plain peer).")
    http: str | None = Field(None, description="HOST:PORT of the HTTP API (port 0 picks a free one).")
    info_file: Path | None = Field(None, description="Write {peer_id, addrs, http} as JSON here once listening.")
    shutdown_grace_s: float = Field(3.0, gt=0, le=60, description="Time given to in-flight work on shutdown.")
    api_key_file: Path | None = Field(
        None,
        description="HTTP API keys, one a line (# comments); when set, every path not in open_paths needs"
        " Authorization: Bearer <key>",
    )
    open_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/metrics"], description="HTTP paths served without a key"
    )
    max_body_bytes: int = Field(1 << 20, gt=0, le=1 << 30, description="larger HTTP request bodies get 413")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve the HTTP API over TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    status_interval_s: float = Field(
        10.0, ge=0, le=3600, description="Seconds between each role's status log line (0: no status lines)."
    )

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        for role in value:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
        return sorted(set(value))

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _HOST_PORT.match(value)
        if not match or int(match["port"]) > 65535:
            raise ValueError(f"must be HOST:PORT with a port in 0..65535, got {value!r}")
        return value

    @field_validator("api_key_file")
    @classmethod
    def _api_key_file(cls, value: Path | None) -> Path | None:
        from swarm.web.http_guard import read_api_keys

        if value is not None:
            read_api_keys(value)  # a missing or keyless file would leave the API open: refuse it here
        return value

    @field_validator("open_paths")
    @classmethod
    def _open_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"each path must start with '/', got {path!r}")
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> NodeSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"node.{missing} is missing: TLS needs both node.tls_cert and node.tls_key")
        return self


class NodeConfig(BaseModel):
    """The whole node's configuration."""

    model_config = ConfigDict(extra="forbid")

    node: NodeSection = Field(default_factory=NodeSection)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    coschedule: CoscheduleConfig = Field(default_factory=CoscheduleConfig)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {dotted}: empty component in field path")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.field=value``; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {path}: value {raw!r} is not valid YAML: {err}") from err
    return path.strip(), value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(root)"
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message} (got {shown})")
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(data: dict[str, Any]) -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(
    path: Path | None = None,
    *,
    preset: str = "default",
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> NodeConfig:
    """Assemble the config: preset, then the --config file, then CLI flags (dotted paths), then --set."""
    preset_path = CONFIGS_DIR / f"{preset}.yaml"
    data = _read_yaml(preset_path) if preset_path.exists() else {}
    if path is not None:
        data = _deep_merge(data, _read_yaml(path))
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set_path(data, dotted, value)
    for text in overrides or []:
        dotted, value = parse_override(text)
        _set_path(data, dotted, value)
    return build_config(data)
