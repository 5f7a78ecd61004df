"""The node applies its placement: each role is built on the torch.device placement chose for it (overrides win),
the decision shows in the announce's devices, /healthz and the peers view, and a device the node lacks is refused
naming the field and what the node has. Inventories are described; the node-level tests use this machine's."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from comms.identity import generate_identity
from protocols import PeerAnnounce, decode_as, encode
from serving.model import resolve_device
from swarm.runtime.config import ConfigError, NodeConfig, load_config
from swarm.runtime.node import Node
from swarm.runtime.placement import DeviceSpec, place_node
from swarm.runtime.rl_role import RLRole
from swarm.runtime.roles import ServeRole, build_roles
from swarm.runtime.train_role import TrainRole

GIB = 2**30
CPU = DeviceSpec("cpu", "cpu", 64 * GIB, 300.0)
H100 = DeviceSpec("cuda:0", "cuda", 80 * GIB, 9000.0)
T4 = DeviceSpec("cuda:1", "cuda", 16 * GIB, 1500.0)
A100 = DeviceSpec("cuda:1", "cuda", 40 * GIB, 6000.0)


def _config(roles: str, *overrides: str) -> NodeConfig:
    flags = {"network.listen": ["/ip4/127.0.0.1/tcp/0"], "node.roles": [r for r in roles.split(",") if r]}
    return load_config(None, flags=flags, overrides=list(overrides))


def _built(config: NodeConfig, devices: list[DeviceSpec]) -> dict[str, Any]:
    placement = place_node(config, devices)
    return {role.name: role for role in build_roles(config, node=None, placement=placement)}


def test_a_slower_second_gpu_gets_the_trainer_and_the_fast_one_the_engine() -> None:
    roles = _built(_config("serve,train"), [CPU, H100, T4])
    serve, train = roles["serve"], roles["train"]
    assert isinstance(serve, ServeRole) and isinstance(train, TrainRole)
    assert serve.device == torch.device("cuda:0") and serve.config.device == "cuda:0"
    assert train.device == torch.device("cuda:1") and train.config.device == "cuda:1"


def test_overrides_win_over_the_placement() -> None:
    roles = _built(_config("serve,train", "training.device=cuda:1"), [CPU, H100, A100])
    assert (roles["serve"].device, roles["train"].device) == (torch.device("cuda:0"), torch.device("cuda:1"))
    roles = _built(_config("serve,train", "serving.device=cuda:1", "training.device=cpu"), [CPU, H100, A100])
    assert (roles["serve"].config.device, roles["train"].config.device) == ("cuda:1", "cpu")


def test_comparable_gpus_share_training_with_the_first_engine() -> None:
    roles = _built(_config("serve,train"), [CPU, H100, A100])
    assert roles["serve"].device == roles["train"].device == torch.device("cuda:0")


def test_an_rl_node_without_serving_builds_its_own_engine_on_the_rollouts_device() -> None:
    roles = _built(_config("rl"), [CPU, H100, T4])
    rl = roles["rl"]
    assert isinstance(rl, RLRole) and rl.device == torch.device("cuda:1")
    assert rl.config.serving.device == "cuda:1"


def test_without_a_placement_roles_keep_their_configured_device() -> None:
    config = _config("serve,train", "serving.device=cpu")
    roles = {r.name: r for r in build_roles(config, node=None)}
    assert roles["serve"].device is None and roles["serve"].config.device == "cpu"
    assert roles["train"].config.device == "auto"


def test_device_names_resolve_alike_for_serving_and_training() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # named, not allocated
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.fixture
def cpu_only() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU-only placement does not apply")


def test_a_cpu_only_node_places_every_role_on_the_cpu_and_shows_it(cpu_only: None) -> None:
    node = Node(_config("serve,train"), generate_identity())
    assert node.placement is not None
    assert (node.placement.serve, node.placement.train, node.placement.cpu_work) == (["cpu"], "cpu", "cpu")
    roles = {r.name: r for r in node.roles}
    assert roles["serve"].device == roles["train"].device == torch.device("cpu")
    assert roles["serve"].config.device == roles["train"].config.device == "cpu"
    assert node.placement_view() == {"serve": ["cpu"], "rollouts": None, "train": "cpu", "cpu_work": "cpu",
                                     "co_scheduled": True}  # fmt: skip
    # what peers read: the announce's CPU device lists the roles placed on it, and survives the wire
    announce = node.make_announce(heartbeat=False)
    assert announce.devices[0].kind == "cpu" and announce.devices[0].roles == ["serve", "train", "cpu_work"]
    decoded = decode_as(encode(announce), PeerAnnounce)
    assert decoded.devices[0].roles == ["serve", "train", "cpu_work"]
    row = node.peers_view()[0]
    assert row["devices"][0]["roles"] == ["serve", "train", "cpu_work"]


def test_a_plain_peer_has_no_placement() -> None:
    node = Node(_config(""), generate_identity())
    assert node.placement is None and node.placement_view() is None and node.roles == []


def test_a_device_the_node_lacks_is_refused_naming_the_field_and_the_devices(cpu_only: None) -> None:
    with pytest.raises(ConfigError, match=r"training\.device='cuda:5': this node has no such device; it has cpu \("):
        Node(_config("serve,train", "training.device=cuda:5"), generate_identity())
    with pytest.raises(ConfigError, match=r"serving\.device='tpu'.*it has cpu \("):
        Node(_config("serve", "serving.device=tpu"), generate_identity())
