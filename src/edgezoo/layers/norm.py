"""Normalisation layers that are not in torch: LayerNorm over channels of an NCHW tensor."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of ``(N, C, H, W)`` ("channels-first" LayerNorm of ConvNeXt/EdgeNeXt)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
