"""Profiling registered models by name (the glue the CLI, benchmarks and tests share)."""
from __future__ import annotations

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
