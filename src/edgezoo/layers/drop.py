"""Stochastic depth (Huang et al., 2016): drop a residual branch per sample during training."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob``, rescaling the kept ones."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


DROP_PATH_SCHEDULES = ("linspace", "block_index")


def drop_path_rates(
    drop_path_rate: float, depths: list[int] | tuple[int, ...], *, schedule: str = "linspace"
) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates over all blocks, split per stage.

    ``schedule="linspace"`` (the usual one, ViT/ConvNeXt-style): ``linspace(0, rate, total)``, so the last block gets
    exactly ``drop_path_rate``. ``schedule="block_index"`` (timm's EfficientNet/MobileNet one): ``rate · i / total``
    for block ``i``, so the last block stays below ``drop_path_rate``; plain Python, so models can also be built on
    the ``meta`` device.
    """
    total = sum(depths)
    if schedule == "linspace":
        rates = torch.linspace(0, drop_path_rate, total, device="cpu").tolist() if total else []
    elif schedule == "block_index":
        rates = [drop_path_rate * i / total for i in range(total)]
    else:
        raise ValueError(f"schedule must be one of {DROP_PATH_SCHEDULES}, got {schedule!r}")
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out
