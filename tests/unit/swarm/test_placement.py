"""Placement of roles on described device inventories, and the CLI's refusals of placements that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocols import Device
from swarm.runtime.config import ConfigError
from swarm.runtime.hardware import device_specs, system_memory_bytes
from swarm.runtime.placement import DeviceSpec, place

GIB = 2**30
CPU = DeviceSpec("cpu", "cpu", 64 * GIB, 300.0)
H100 = DeviceSpec("cuda:0", "cuda", 80 * GIB, 9000.0)
T4 = DeviceSpec("cuda:1", "cuda", 16 * GIB, 1500.0)
A100 = DeviceSpec("cuda:1", "cuda", 40 * GIB, 6000.0)
SMALL = DeviceSpec("cuda:0", "cuda", 4 * GIB, 5000.0)
ALL = ("serve", "train", "rl")


def test_cpu_only_runs_every_role_on_the_cpu_co_scheduled() -> None:
    p = place([CPU], ALL, serve_bytes=GIB, train_bytes=GIB)
    assert (p.serve, p.train, p.rollouts, p.cpu_work) == (["cpu"], "cpu", "cpu", "cpu")
    assert p.co_scheduled


def test_cpu_and_one_gpu_serve_and_train_on_the_gpu_the_cpu_keeps_the_rest() -> None:
    p = place([CPU, H100], ALL, serve_bytes=20 * GIB, train_bytes=8 * GIB)
    assert (p.serve, p.train, p.rollouts, p.cpu_work) == (["cuda:0"], "cuda:0", "cuda:0", "cpu")
    assert p.co_scheduled


def test_a_much_slower_second_gpu_takes_rollouts_and_training() -> None:
    p = place([CPU, H100, T4], ALL, serve_bytes=12 * GIB, train_bytes=8 * GIB)
    assert (p.serve, p.train, p.rollouts) == (["cuda:0"], "cuda:1", "cuda:1")
    assert not p.co_scheduled


def test_two_comparable_gpus_both_serve_and_training_shares_the_fastest() -> None:
    p = place([CPU, H100, A100], ("serve", "train"), serve_bytes=12 * GIB, train_bytes=8 * GIB)
    assert (p.serve, p.train, p.rollouts) == (["cuda:0", "cuda:1"], "cuda:0", None)


def test_a_gpu_too_small_for_the_served_model_trains_while_the_cpu_serves() -> None:
    p = place([CPU, SMALL], ("serve", "train"), serve_bytes=10 * GIB, train_bytes=GIB)
    assert (p.serve, p.train) == (["cpu"], "cuda:0")


def test_overrides_win_and_a_missing_device_is_named_with_what_the_node_has() -> None:
    p = place([CPU, H100], ("serve", "train"), serving_device="cuda:0", training_device="cpu")
    assert (p.serve, p.train) == (["cuda:0"], "cpu")
    with pytest.raises(ConfigError, match=r"serving\.device='cuda:3'.*cpu \(64\.0 GiB\), cuda:0 \(80\.0 GiB\)"):
        place([CPU, H100], ("serve",), serving_device="cuda:3")
    with pytest.raises(ConfigError, match=r"training\.device='cuda'.*cpu \(64\.0 GiB\)"):
        place([CPU], ("train",), training_device="cuda")


def test_training_beside_serving_needs_room_for_both() -> None:
    p = place([CPU, H100], ("serve", "train"), serve_bytes=70 * GIB, train_bytes=20 * GIB)
    assert (p.serve, p.train) == (["cuda:0"], "cpu")  # 90 GiB do not fit the 80 GiB GPU: the CPU trains
    with pytest.raises(ConfigError, match=r"training\.device: needs 90\.00 GiB on cuda:0"):
        place([CPU, H100], ("serve", "train"), serve_bytes=70 * GIB, train_bytes=20 * GIB, training_device="cuda:0")


def test_a_budget_no_device_holds_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"serving\.kv_cache_bytes.*100\.00 GiB.*cuda:0 \(80\.0 GiB\)"):
        place([CPU, H100], ("serve",), serve_bytes=100 * GIB)
    with pytest.raises(ConfigError, match=r"serving\.kv_cache_bytes: needs 90\.00 GiB on cuda:0"):
        place([CPU, H100], ("serve",), serve_bytes=90 * GIB, serving_device="cuda:0")


def test_announced_devices_map_to_config_names() -> None:
    specs = device_specs([Device("cpu", "x", 1), Device("cuda", "A", 2, 1.0, 9.0), Device("cuda", "B", 3)])
    assert [s.name for s in specs] == ["cpu", "cuda:0", "cuda:1"]
    assert specs[1].decode_tok_s == 9.0


def _join(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, "-m", "swarm", "join", "--listen", "/ip4/127.0.0.1/tcp/0",
           "--identity", str(tmp_path / "id.key"), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_cli_refuses_a_device_the_node_lacks_and_an_unknown_role(tmp_path: Path) -> None:
    out = _join("--roles", "serve,train", "--device", "cuda:7", tmp_path=tmp_path)
    assert out.returncode == 2
    assert "serving.device='cuda:7'" in out.stderr + out.stdout and "cpu (" in out.stderr + out.stdout
    out = _join("--roles", "serve,fly", tmp_path=tmp_path)
    assert out.returncode == 2 and "unknown role 'fly'" in out.stderr + out.stdout


def test_cli_refuses_a_kv_budget_no_device_holds(tmp_path: Path) -> None:
    budget = 2**40
    if system_memory_bytes() >= budget:
        pytest.skip("this machine holds a 1 TiB KV cache")
    out = _join("--roles", "serve", "--device", "cpu", "--set", f"serving.kv_cache_bytes={budget}", tmp_path=tmp_path)
    assert out.returncode == 2
    assert "serving.kv_cache_bytes" in out.stderr + out.stdout and "on cpu, which has" in out.stderr + out.stdout
