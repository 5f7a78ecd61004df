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
