"""Squeeze-and-Excitation (Hu et al., 2018) as used by MobileNetV3: pool → 1×1 reduce → act → 1×1 expand → gate."""
from __future__ import annotations

from torch import Tensor, nn

from .activations import get_act


class SqueezeExcite(nn.Module):
    """Channel attention: ``x * gate(W2 act(W1 mean_hw(x)))``.

    ``rd_chs`` is the reduced width (MobileNetV3 uses ``make_divisible(expanded / 4)``); the gate is h-sigmoid in
    MobileNetV3 and sigmoid in the original SE paper.
    """

    def __init__(self, chs: int, rd_chs: int, *, act: str = "relu", gate: str = "hard_sigmoid") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = get_act(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = get_act(gate)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)
