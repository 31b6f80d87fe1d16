"""Universal Inverted Bottleneck and fused inverted bottleneck (MobileNetV4, Qin et al. 2024, arXiv:2404.10518).

The UIB generalises the MobileNetV2 inverted bottleneck with two *optional* depthwise convs:
one before the 1×1 expansion ("start") and one between expansion and projection ("middle"). Switching them on and
off gives four blocks that the NAS of the paper picks from per layer:

============  =============  ==============  ========================================================
form          start DW       middle DW       what it is
============  =============  ==============  ========================================================
IB            –              k×k             MobileNetV2 inverted bottleneck
ConvNext      k×k            –               ConvNeXt-like: spatial mixing before the expansion
ExtraDW       k×k            k×k             both; cheap extra depth and receptive field
FFN           –              –               two 1×1 convs, the transformer feed-forward as a conv
============  =============  ==============  ========================================================

The fused IB (a k×k full conv doing the expansion, then a 1×1 projection; EfficientNet-EdgeTPU / "FusedMBConv")
is what MobileNetV4 uses right after the stem, where channels are few and a full conv is accelerator friendly.

Child names (``dw_start``, ``pw_exp``, ``dw_mid``, ``pw_proj``, ``layer_scale.gamma``; ``conv_exp``, ``conv_pwl``)
are part of the checkpoint format; every conv+BN pair is a :class:`~edgezoo.layers.conv.ConvNormAct`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .conv import ConvNormAct
from .drop import DropPath
from .helpers import make_divisible

_STRIDES = (1, 2)


def _check_kernel(value: int | None, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        allowed = "an odd int >= 1" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_stride(stride: int) -> None:
    if isinstance(stride, bool) or stride not in _STRIDES:
        raise ValueError(f"stride must be one of {_STRIDES}, got {stride!r}")


def _check_positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


class LayerScale2d(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT, Touvron et al. 2021) for NCHW maps.

    MobileNetV4's hybrid models start every UIB / MQA branch at a tiny scale (1e-5) so a deep stack with attention
    begins close to identity and trains stably.
    """

    def __init__(self, chs: int, *, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((chs,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class UniversalInvertedBottleneck(nn.Module):
    """UIB: ``[dw_start] → pw_exp → [dw_mid] → pw_proj → [layer scale]``, residual when shapes allow.

    Args:
        in_chs, out_chs: block input / output channels.
        start_dw_kernel: kernel of the depthwise conv before the expansion (``None``: absent).
        mid_dw_kernel: kernel of the depthwise conv after the expansion (``None``: absent).
        expand_ratio: expanded width = ``make_divisible(in_chs * expand_ratio)``.
        stride: 1 or 2. The stride sits on the middle DW when there is one, else on the start DW (as the paper's
            reference), so a strided block needs at least one of them.
        act: activation after the expansion and the middle DW. The start DW and the projection are linear.
        layer_scale_init: initial value of the per-channel branch scale (``None``: no layer scale).
        drop_path: stochastic-depth probability of the residual branch.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        start_dw_kernel: int | None,
        mid_dw_kernel: int | None,
        expand_ratio: float,
        stride: int = 1,
        act: str = "relu",
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _check_kernel(start_dw_kernel, "start_dw_kernel", optional=True)
        _check_kernel(mid_dw_kernel, "mid_dw_kernel", optional=True)
        _check_stride(stride)
        _check_positive(expand_ratio, "expand_ratio")
        if stride > 1 and start_dw_kernel is None and mid_dw_kernel is None:
            raise ValueError(
                f"stride={stride} needs a depthwise conv to carry it: set start_dw_kernel or mid_dw_kernel "
                "(the FFN form has no spatial op)"
            )
        mid_chs = make_divisible(in_chs * expand_ratio)
        if start_dw_kernel is not None:
            start_stride = 1 if mid_dw_kernel is not None else stride
            self.dw_start = ConvNormAct(in_chs, in_chs, start_dw_kernel, stride=start_stride, groups=in_chs, act=None)
        else:
            self.dw_start = nn.Identity()
        self.pw_exp = ConvNormAct(in_chs, mid_chs, 1, act=act)
        if mid_dw_kernel is not None:
            self.dw_mid = ConvNormAct(mid_chs, mid_chs, mid_dw_kernel, stride=stride, groups=mid_chs, act=act)
        else:
            self.dw_mid = nn.Identity()
        self.pw_proj = ConvNormAct(mid_chs, out_chs, 1, act=None)
        self.layer_scale = LayerScale2d(out_chs, init_value=layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer_scale(self.pw_proj(self.dw_mid(self.pw_exp(self.dw_start(x)))))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out


class FusedInvertedBottleneck(nn.Module):
    """Fused IB: a k×k full conv expands (and strides), a 1×1 linear conv projects; residual when shapes allow.

    Fusing the 1×1 expansion with the depthwise conv into one dense conv costs more MACs but runs better on
    accelerators when channels are few, which is why MobileNetV4 uses it in the first stage.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: int,
        expand_ratio: float,
        stride: int = 1,
        act: str = "relu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size, "kernel_size", optional=False)
        _check_stride(stride)
        _check_positive(expand_ratio, "expand_ratio")
        mid_chs = make_divisible(in_chs * expand_ratio)
        self.conv_exp = ConvNormAct(in_chs, mid_chs, kernel_size, stride=stride, act=act)
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, act=None)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_pwl(self.conv_exp(x))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out
