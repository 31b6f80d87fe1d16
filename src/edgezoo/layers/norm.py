"""Normalisation layers that are not in torch: LayerNorm over channels of an NCHW tensor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of ``(N, C, H, W)`` ("channels-first" LayerNorm of ConvNeXt/EdgeNeXt)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def deploy_form(self) -> nn.Module:
        """Inference form without the two permutes (used by :func:`edgezoo.deploy.fuse`)."""
        return _ChannelLayerNorm2d(self)


class _ChannelLayerNorm2d(nn.Module):
    """:class:`LayerNorm2d`'s inference form: normalised over dim 1 in place, then the per-channel affine."""

    def __init__(self, ln: LayerNorm2d) -> None:
        super().__init__()
        self.norm = ChannelNorm2d(ln.eps)
        c = ln.normalized_shape[0]
        weight = ln.weight if ln.weight is not None else torch.ones(c)
        bias = ln.bias if ln.bias is not None else torch.zeros(c)
        self.register_buffer("weight", weight.detach().clone().reshape(1, c, 1, 1))
        self.register_buffer("bias", bias.detach().clone().reshape(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias, self.norm(x), self.weight)


class ChannelNorm2d(nn.Module):
    """Affine-free LayerNorm over the channels of ``(N, C, H, W)``, written without leaving NCHW.

    The deploy form of :class:`LayerNorm2d` (its affine folded into the 1×1 conv that follows, see
    :func:`edgezoo.deploy.fuse`): mean and variance over dim 1 as plain reductions, so an exported graph needs no
    transposes around it. OpenVINO runs them as two channel reductions (its fused MVN covers trailing axes only);
    computing the means as 1×1 convs with weights 1/C measured ≤ 3 % faster there and 30 % slower in eager
    PyTorch, so the plain form stays.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).mean(dim=1, keepdim=True)
        return centred / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def fold_affine_into_conv(
    conv: nn.Conv2d, *, in_scale: Tensor | None = None, in_shift: Tensor | None = None, out_scale: Tensor | None = None
) -> nn.Conv2d:
    """A new conv computing ``out_scale ⊙ conv(in_scale ⊙ x + in_shift)`` (per-channel vectors; folded in float64).

    ``conv(γ⊙x + β) = conv_{W·γ}(x) + Σ_{c,i,j} W[o,c,i,j]·β_c`` holds exactly only without padding (padded
    borders would see 0, not β) and without groups, which is all the callers need; anything else is refused.
    """
    if conv.groups != 1 or any(p != 0 for p in conv.padding) or conv.padding_mode != "zeros":
        raise ValueError(f"can only fold an affine into an ungrouped, unpadded conv, got {conv}")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if in_shift is not None:
        b = b + (w * in_shift.detach().double()[None, :, None, None]).sum((1, 2, 3))
    if in_scale is not None:
        w = w * in_scale.detach().double()[None, :, None, None]
    if out_scale is not None:
        s = out_scale.detach().double().reshape(-1)
        w, b = w * s[:, None, None, None], b * s
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       dilation=conv.dilation)
    dtype = conv.weight.dtype
    with torch.no_grad():
        folded.weight.copy_(w.to(dtype))
        folded.bias.copy_(b.to(dtype))
    return folded.requires_grad_(False)


def linear_as_conv1x1(linear: nn.Linear, *, in_scale: Tensor | None = None, in_shift: Tensor | None = None,
                      out_scale: Tensor | None = None) -> nn.Conv2d:
    """A 1×1 conv computing ``out_scale ⊙ linear(in_scale ⊙ x + in_shift)`` on NCHW maps (folded in float64).

    Lets a channels-last MLP (``Linear`` on ``(B, H, W, C)``) run channels-first, with a preceding LayerNorm's
    affine (``in_scale``, ``in_shift``) and a following layer scale (``out_scale``) multiplied into its weights.
    """
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.detach()[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias.detach())
    return fold_affine_into_conv(conv, in_scale=in_scale, in_shift=in_shift, out_scale=out_scale)
