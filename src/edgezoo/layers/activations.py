"""Activation lookup by name, so variant tables can say ``act="hard_swish"`` instead of holding classes."""
from __future__ import annotations

from typing import Callable

from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hard_swish": lambda: nn.Hardswish(inplace=True),
    "hard_sigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": lambda: nn.Sigmoid(),
    "identity": lambda: nn.Identity(),
}


def get_act(name: str | None) -> nn.Module:
    """Build an activation module from its name (``None`` means identity: a linear bottleneck)."""
    if name is None:
        return nn.Identity()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None
