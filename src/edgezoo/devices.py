"""What this machine is: one check for a user-given device string (shared by training, evaluation and prediction)
and the CPU's name and feature flags (shared by benchmark reports, latency-table keys and the bf16/int8 choice).

``torch.device("tpu")`` raises a ``RuntimeError`` listing twenty internal device types, and ``"cuda"`` on a machine
without a GPU only fails at the first tensor moved there, deep inside a loop. Checking the string once, up front,
turns both into a ``ValueError`` that says what was asked and what this machine offers.
"""
from __future__ import annotations

import platform

import torch

# Device types a user can run edgezoo's models on, with the check that says whether this machine has one.
_USABLE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())
    return False


def available_devices() -> list[str]:
    """The device strings this machine can run on, e.g. ``['cpu', 'cuda', 'cuda:0', 'cuda:1']``."""
    out = ["cpu"]
    for kind in _USABLE_TYPES[1:]:
        if _available(kind):
            out.append(kind)
            if kind == "cuda":
                out.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    return out


def resolve_device(device: str | torch.device, *, arg: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` this machine has, or a ``ValueError`` naming ``arg`` and the choices.

    ``arg`` is how the caller's user spells the setting (``"device"`` for the library, ``"--device"`` in the CLI).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in _USABLE_TYPES:
            raise ValueError(f"{arg} {device!r} is not a device edgezoo can use; allowed: cpu, cuda, cuda:N, mps, xpu "
                             f"(this machine has: {', '.join(available_devices())})")
    else:
        raise TypeError(f"{arg} must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    if dev.type not in _USABLE_TYPES:
        raise ValueError(f"{arg} {str(dev)!r} is not a device edgezoo can use; allowed: cpu, cuda, cuda:N, mps, xpu")
    if not _available(dev.type):
        raise ValueError(f"{arg} {str(device)!r} was requested but no {dev.type.upper()} device is available on this "
                         f"machine (available: {', '.join(available_devices())})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{arg} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return dev


def _cpuinfo_field(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo``; None where it is absent or unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (``/proc/cpuinfo``), lower case; empty where it cannot be read."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags else set()
