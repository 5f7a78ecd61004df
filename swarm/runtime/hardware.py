"""What this machine is, for the announce: device kind and name, memory, cores. Reads the OS, imports no torch
unless a role already loaded it."""

from __future__ import annotations

import os
import platform
import sys

from protocols import Hardware


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def logical_cores() -> int:
    """Cores this process may run on (its CPU affinity), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def detect_hardware() -> Hardware:
    """Describe this machine; a CUDA device is reported only if torch is already imported and sees one."""
    cores = logical_cores()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(device="cuda", device_name=props.name, memory_bytes=props.total_memory, cpu_cores=cores)
    return Hardware(device="cpu", device_name=cpu_name(), memory_bytes=system_memory_bytes(), cpu_cores=cores)


def detect_devices(measured: dict[str, tuple[float, float]] | None = None, *, import_torch: bool = False) -> list:
    """Every compute device: the CPU, then each CUDA device (seen only if torch is imported, or `import_torch`).
    `measured` maps a device name (`cpu`, `cuda:0`) to its measured (prefill, decode) tokens/s."""
    from protocols import Device

    measured = measured or {}
    devices = [Device("cpu", cpu_name(), system_memory_bytes(), *measured.get("cpu", (0.0, 0.0)))]
    torch = sys.modules.get("torch")
    if torch is None and import_torch:
        import torch
    if torch is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(Device("cuda", props.name, props.total_memory, *measured.get(f"cuda:{i}", (0.0, 0.0))))
    return devices


def device_specs(devices: list) -> list:
    """Placement's view of announced devices: names as config fields spell them (`cpu`, `cuda:0`, ...)."""
    from swarm.runtime.placement import DeviceSpec

    seen: dict[str, int] = {}
    specs = []
    for d in devices:
        index = seen.get(d.kind, 0)
        seen[d.kind] = index + 1
        name = d.kind if d.kind == "cpu" else f"{d.kind}:{index}"
        specs.append(DeviceSpec(name, d.kind, d.memory_bytes, d.decode_tok_s))
    return specs
