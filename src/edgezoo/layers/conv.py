"""Conv → BatchNorm → activation, the unit every convnet here is made of.

Kept as a ``Sequential``-like module with fixed child names (``conv``, ``bn``, ``act``) so that BN folding and the
cost profiler can find the conv+BN pairs by structure, not by guessing.
"""
from __future__ import annotations

from torch import Tensor, nn

from .activations import get_act


def same_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding that keeps ``ceil(H / stride)`` outputs for odd kernels (PyTorch-style 'same')."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class ConvNormAct(nn.Module):
    """``act(bn(conv(x)))`` with symmetric padding; ``act=None`` gives a linear (no activation) projection."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: str | None = "relu",
        bias: bool = False,
        norm: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=same_padding(kernel_size, stride, dilation),
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum) if norm else nn.Identity()
        self.act = get_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
