"""Inverted residual with linear bottleneck (MobileNetV2, Sandler et al. 2018), optionally with SE (MobileNetV3).

1×1 expand → k×k depthwise → [SE] → 1×1 linear projection, plus an identity shortcut when shapes allow. The
projection has no activation: the paper shows ReLU in the narrow bottleneck destroys information.
Child names are fixed (``conv_pw``, ``conv_dw``, ``se``, ``conv_pwl``) so converters and BN folding can rely on them.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .conv import ConvNormAct
from .drop import DropPath


class InvertedResidual(nn.Module):
    """MV2 block. ``mid_chs`` is the expanded width; ``expand=False`` skips the 1×1 expansion (expansion ratio 1).

    ``se`` builds the squeeze-excite module from the expanded width (``None`` = no SE). ``skip=None`` means the
    paper's rule: identity shortcut iff stride 1 and ``in_chs == out_chs``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        mid_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu6",
        expand: bool = True,
        se: Callable[[int], nn.Module] | None = None,
        skip: bool | None = None,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not expand and mid_chs != in_chs:
            raise ValueError(f"expand=False needs mid_chs == in_chs, got mid_chs={mid_chs}, in_chs={in_chs}")
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv_pw = ConvNormAct(in_chs, mid_chs, 1, act=act, **bn) if expand else nn.Identity()
        self.conv_dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride=stride, groups=mid_chs, act=act, **bn)
        self.se = se(mid_chs) if se is not None else nn.Identity()
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, act=None, **bn)
        self.has_skip = (stride == 1 and in_chs == out_chs) if skip is None else skip
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out
