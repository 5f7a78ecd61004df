"""Presets load, every `swarm join` flag maps to a field, and bad values name the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.cli.node import JOIN_FLAG_FIELDS
from swarm.runtime.config import CONFIGS_DIR, ConfigError, NodeConfig, load_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
def test_every_preset_loads(preset: str) -> None:
    assert isinstance(load_config(preset=preset), NodeConfig)


def test_default_preset_matches_code_defaults() -> None:
    assert load_config() == NodeConfig()


@pytest.mark.parametrize("flag", sorted(JOIN_FLAG_FIELDS))
def test_every_join_flag_maps_to_a_field(flag: str) -> None:
    section, field = JOIN_FLAG_FIELDS[flag].split(".")
    assert field in type(getattr(NodeConfig(), section)).model_fields


def test_precedence_preset_file_flags_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("network:\n  heartbeat_s: 3\n  peer_timeout_s: 30\n  swarm_id: fromfile\n")
    config = load_config(path, flags={"network.swarm_id": "fromflag"}, overrides=["network.heartbeat_s=4.5"])
    assert config.network.heartbeat_s == 4.5
    assert config.network.peer_timeout_s == 30
    assert config.network.swarm_id == "fromflag"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("network.heartbeat_s=-1", "network.heartbeat_s"),
        ("network.heartbeat_s=abc", "'abc'"),
        ("node.roles=[cook]", "unknown role 'cook'"),
        ("node.http=localhost", "HOST:PORT"),
        ("network.swarm_id=has space", "network.swarm_id"),
        ("network.listen=[/ip4/1.2.3.4/udp/1]", "only TCP"),
        ("network.peers=[/ip4/127.0.0.1/tcp/1]", "/p2p/"),
        ("network.bogus=1", "network.bogus"),
        ("network.peer_timeout_s=1", "peer_timeout_s (1.0) must be greater than heartbeat_s"),
    ],
)
def test_bad_values_name_field_and_value(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert expected in str(info.value)


def test_malformed_override_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        load_config(overrides=["justaword"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_api_key_file_must_hold_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.api_key_file: cannot read"):
        load_config(flags={"node.api_key_file": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"node\.api_key_file: .*holds no key"):
        load_config(flags={"node.api_key_file": str(empty)})
    keys = tmp_path / "keys"
    keys.write_text("sk-1\n")
    assert load_config(flags={"node.api_key_file": str(keys)}).node.api_key_file == keys


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"node\.tls_key is missing"):
        load_config(flags={"node.tls_cert": str(cert)})
    with pytest.raises(ConfigError, match=r"node\.tls_cert: no such file"):
        load_config(flags={"node.tls_cert": str(tmp_path / "nope"), "node.tls_key": str(cert)})


def test_priority_range_is_ordered_and_clamps() -> None:
    with pytest.raises(ConfigError, match=r"serving\.min_priority \(5\) must not exceed serving\.max_priority \(0\)"):
        load_config(overrides=["serving.min_priority=5"])
    serving = load_config(overrides=["serving.min_priority=-2", "serving.max_priority=3"]).serving
    assert [serving.clamp_priority(p) for p in (-(10**12), -2, 0, 3, 10**12)] == [-2, -2, 0, 3, 3]
