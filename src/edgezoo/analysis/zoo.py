"""Profiling registered models by name (the glue the CLI, benchmarks and tests share)."""
from __future__ import annotations

import math
from typing import Any

import torch

from .profiler import Profile, profile


def model_input_shape(name: str, img_size: int | None = None) -> tuple[int, int, int]:
    """``(C, H, W)``: the model's default input, or ``img_size × img_size``."""
    from ..registry import get_entry

    chans, height, width = get_entry(name).default_cfg["input_size"]
    if img_size is None:
        return int(chans), int(height), int(width)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be an int >= 1, got {img_size!r}")
    return int(chans), img_size, img_size


def profile_model(
    name: str,
    *,
    img_size: int | None = None,
    width_mult: float | None = None,
    dtype: torch.dtype = torch.float32,
    batch: int = 1,
) -> Profile:
    """Profile registered model ``name`` at its default input (or ``img_size``), built on the meta device."""
    from ..factory import create_model

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    overrides: dict[str, Any] = {}
    if width_mult is not None:
        overrides["width_mult"] = width_mult
    shape = model_input_shape(name, img_size)
    with torch.device("meta"):  # shapes only: no memory, no weight init
        model = create_model(name, img_size=img_size, **overrides)
    return profile(model, (batch, *shape), dtype, name=name)


def available_memory_bytes() -> int | None:
    """Memory this process can still get: the smaller of the host's MemAvailable and a cgroup (container) limit's
    headroom; ``None`` where neither can be read (non-Linux)."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits_memory(name: str, img_size: int | None, *, batch: int = 1, arg: str = "img_size") -> None:
    """``ValueError`` when running ``name`` at ``img_size`` (batch ``batch``) cannot fit in this machine's memory.

    The estimate, from a meta-device profile (no memory used), is weights plus every layer's fp32 output: what an
    eager forward holds at most, and what export tracing keeps alive. Checking it up front replaces an allocator
    failure (or the kernel's OOM killer) part-way through with a message that says what would fit.
    """
    available = available_memory_bytes()
    if available is None or img_size is None:
        return
    _, height, width = model_input_shape(name, None)
    if batch * img_size * img_size <= height * width:  # the model's own input size always fits: skip the profiling
        return

    def need(size: int) -> int:
        prof = profile_model(name, img_size=size, batch=batch)
        return prof.weight_bytes + prof.activation_bytes

    try:
        needed = need(img_size)
    except ValueError:  # a size only the caller's overrides (e.g. a trained patch size) accept: no estimate
        return
    if needed <= available:
        return
    # Activations grow with the pixel count, so the size that fits scales by about the square root of the
    # ratio; stride rounding makes that inexact, so step down in multiples of 32 (valid for every family's
    # stride and patch size) until the estimate fits.
    fits = int(img_size * math.sqrt(available / needed)) // 32 * 32
    while fits > 32 and need(fits) > available:
        fits -= 32
    raise ValueError(
        f"{arg} {img_size} needs up to {_gb(needed)} for {name} (batch {batch}) but this machine has "
        f"{_gb(available)} available; use {arg} {max(32, fits)} or less"
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"
