"""Which of a node's devices runs which role: a pure function of the device inventory, the roles and the memory
each role needs.

Rules (COSCHEDULE.md B.2): the fastest device the serving model fits on serves; another device the model fits on
serves too unless it has under a third of that one's measured speed, in which case it takes rollouts and training
(never a CPU next to an accelerator: a CPU engine beside a GPU only helps loose-SLO work and must be placed by
measurement, not by default). Without such a device, rollouts and training share the serving device (the arbiter
co-schedules them). The CPU always takes scoring, codecs and checkpointing. `serving.device` / `training.device`
override the choice. This module knows device descriptions and byte counts, nothing about torch or the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from swarm.runtime.config import ConfigError

SLOW_DEVICE_RATIO = 1 / 3  # a device under this share of the serving device's speed gets rollouts and training


@dataclass(frozen=True)
class DeviceSpec:
    """One device as placement sees it: `name` is what config fields name (`cpu`, `cuda:0`, ...)."""

    name: str
    kind: str
    memory_bytes: int
    decode_tok_s: float = 0.0  # measured; 0 = not measured (ranked by kind: accelerators before the CPU)

    @property
    def speed(self) -> tuple[int, float]:
        return (self.kind != "cpu", self.decode_tok_s)


@dataclass(frozen=True)
class Placement:
    """Device names per role: `serve` may list several engines (local replicas); `cpu_work` names the device of
    reward scoring, codecs and checkpointing."""

    serve: list[str] = field(default_factory=list)
    rollouts: str | None = None
    train: str | None = None
    cpu_work: str = "cpu"

    @property
    def co_scheduled(self) -> bool:
        """True when training or rollouts share a serving device (the arbiter must gate them)."""
        return any(d in self.serve for d in (self.train, self.rollouts) if d is not None)

    def roles_on(self, device: str) -> list[str]:
        """What runs on `device`, as the announce lists it: `serve`, `rollouts`, `train`, `cpu_work`."""
        placed = [("serve", device in self.serve), ("rollouts", self.rollouts == device),
                  ("train", self.train == device), ("cpu_work", self.cpu_work == device)]  # fmt: skip
        return [name for name, here in placed if here]

    def as_dict(self) -> dict[str, object]:
        return {"serve": list(self.serve), "rollouts": self.rollouts, "train": self.train, "cpu_work": self.cpu_work,
                "co_scheduled": self.co_scheduled}  # fmt: skip

    def describe(self) -> str:
        """One line for the log."""
        parts = [f"serve on {', '.join(self.serve)}"] if self.serve else []
        parts += [f"{role} on {where}" for role, where in (("rollouts", self.rollouts), ("train", self.train)) if where]
        parts.append(f"scoring, codecs and checkpoints on {self.cpu_work}")
        return "; ".join(parts) + (" (co-scheduled by the arbiter)" if self.co_scheduled else "")


def _describe(devices: Sequence[DeviceSpec]) -> str:
    return ", ".join(f"{d.name} ({d.memory_bytes / 2**30:.1f} GiB)" for d in devices)


def _named(devices: Sequence[DeviceSpec], name: str, field_name: str) -> DeviceSpec:
    for d in devices:
        if d.name == name or (name == d.kind and d.name in (name, f"{name}:0")):
            return d
    raise ConfigError(f"{field_name}={name!r}: this node has no such device; it has {_describe(devices)}")


def _fits(device: DeviceSpec, need_bytes: int, field_name: str, overridden: bool) -> bool:
    ok = device.memory_bytes >= need_bytes
    if overridden and not ok:
        raise ConfigError(
            f"{field_name}: needs {need_bytes / 2**30:.2f} GiB on {device.name}, which has "
            f"{device.memory_bytes / 2**30:.2f} GiB"
        )
    return ok


def place(
    devices: Sequence[DeviceSpec],
    roles: Sequence[str],
    *,
    serve_bytes: int = 0,
    train_bytes: int = 0,
    serving_device: str = "auto",
    training_device: str = "auto",
) -> Placement:
    """Decide where each role runs. `serve_bytes`: weights plus KV budget of the engine; `train_bytes`: weights,
    gradients and optimizer state of the trained model. Raises ConfigError naming the field and what the node has
    when an override names a missing device or nothing holds a role's memory."""
    if not devices:
        raise ConfigError("no devices described")
    cpu = next((d for d in devices if d.kind == "cpu"), devices[0])
    serve: list[DeviceSpec] = []
    if "serve" in roles or "rl" in roles:
        serve = _serving_devices(devices, serve_bytes, serving_device)
    wants_train = "train" in roles or "rl" in roles
    train: DeviceSpec | None = None
    if wants_train:
        train = _training_device(devices, serve, train_bytes, training_device, serve_bytes)
    rollouts = None
    if "rl" in roles:  # rollouts are generation: on the trainer's device when it is a slower accelerator
        rollouts = train.name if train is not None and train not in serve and train.kind != "cpu" else serve[0].name
    return Placement(serve=[d.name for d in serve], rollouts=rollouts,
                     train=train.name if train else None, cpu_work=cpu.name)  # fmt: skip


def _serving_devices(devices: Sequence[DeviceSpec], need: int, override: str) -> list[DeviceSpec]:
    if override != "auto":
        chosen = _named(devices, override, "serving.device")
        _fits(chosen, need, "serving.kv_cache_bytes", overridden=True)
        return [chosen]
    fitting = sorted((d for d in devices if _fits(d, need, "", False)), key=lambda d: d.speed, reverse=True)
    if not fitting:
        raise ConfigError(
            f"serving.kv_cache_bytes: weights plus KV cache need {need / 2**30:.2f} GiB; no device holds that "
            f"(this node has {_describe(devices)})"
        )
    best = fitting[0]
    serve = [best]
    for d in fitting[1:]:
        if d.kind == "cpu" and best.kind != "cpu":
            continue  # never by default beside an accelerator
        if best.decode_tok_s and d.decode_tok_s >= SLOW_DEVICE_RATIO * best.decode_tok_s:
            serve.append(d)
    return serve


def _training_device(
    devices: Sequence[DeviceSpec], serve: list[DeviceSpec], need: int, override: str, serve_need: int = 0
) -> DeviceSpec:
    """Training memory is a fixed budget beside the serving engine's weights and KV cache on a shared device."""
    if override != "auto":
        chosen = _named(devices, override, "training.device")
        _fits(chosen, need + (serve_need if chosen in serve else 0), "training.device", overridden=True)
        return chosen
    spare = [d for d in devices if d not in serve and d.kind != "cpu" and _fits(d, need, "", False)]
    if spare:  # a slower accelerator of its own: no co-scheduling needed
        return max(spare, key=lambda d: d.speed)
    for d in serve:
        if _fits(d, need + serve_need, "", False):
            return d
    fitting = sorted(
        (d for d in devices if d not in serve and _fits(d, need, "", False)), key=lambda d: d.speed, reverse=True
    )
    if not fitting:
        raise ConfigError(
            f"training: the model, gradients and optimizer need {need / 2**30:.2f} GiB; no device holds that "
            f"(this node has {_describe(devices)})"
        )
    return fitting[0]


def model_files_bytes(model: str) -> int:
    """Bytes of a local checkpoint's weight files (0 for the embedded default model: a few MB at most)."""
    from pathlib import Path

    path = Path(model)
    if model == "default" or not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))


def training_bytes(model: object) -> int:
    """fp32 weights, gradients and two AdamW moments of the trained model: 16 bytes a parameter. A checkpoint
    directory is sized from its weight files (stored at 2 bytes a parameter or more, so this never undercounts
    by more than the dtype's ratio); an embedded name from its shape."""
    from serving.model import EMBEDDED_SPECS, build_byte_tokenizer

    if isinstance(model, str):
        if model not in EMBEDDED_SPECS:
            return 8 * model_files_bytes(model)
        spec = EMBEDDED_SPECS[model]
        h, inter, layers = spec.hidden_size, spec.intermediate_size, spec.num_layers
    else:
        h, inter, layers = model.hidden_size, model.intermediate_size, model.num_layers
    vocab = len(build_byte_tokenizer())
    return 16 * (2 * vocab * h + layers * (4 * h * h + 3 * h * inter))


def place_node(config: object, devices: Sequence[DeviceSpec]) -> Placement:
    """The placement a node config asks for on `devices`; ConfigError (naming the field) when it cannot."""
    serving, training = config.serving, config.training
    return place(
        devices,
        config.node.roles,
        serve_bytes=serving.kv_cache_bytes + model_files_bytes(serving.model),
        train_bytes=training_bytes(training.model),
        serving_device=serving.device,
        training_device=training.device,
    )
