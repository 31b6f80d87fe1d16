"""Resampling learned absolute position embeddings to a new patch grid.

A ViT learns one embedding per patch position of the grid it was trained on. To run it on another grid (a larger
fine-tuning resolution, or a non-square input), the embeddings are treated as a ``C``-channel image over the old
grid and resized bicubically, as proposed in the ViT paper (Dosovitskiy et al. 2021, §3.2 "Fine-tuning and higher
resolution"). Prefix tokens (the class token) have no position on the grid and are kept as they are.

The resize matches the reference implementation bit for bit: float32 interpolation, ``align_corners=False`` and
anti-aliasing on (which only matters when shrinking the grid).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def square_grid(num_tokens: int) -> tuple[int, int] | None:
    """The square grid holding ``num_tokens`` positions, or ``None`` when that count is not a perfect square."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else None


def resample_pos_embed(
    pos_embed: Tensor,
    *,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resize ``pos_embed`` of shape ``(1, prefix + old_h·old_w, C)`` to ``(1, prefix + new_h·new_w, C)``.

    Returns the input unchanged when the grids are equal.
    """
    old_h, old_w = old_grid
    new_h, new_w = new_grid
    batch, tokens, dim = pos_embed.shape
    if tokens != num_prefix_tokens + old_h * old_w:
        raise ValueError(
            f"pos_embed has {tokens} tokens, which does not fit {num_prefix_tokens} prefix token(s) plus an "
            f"{old_h}x{old_w} grid"
        )
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    # (1, old_h·old_w, C) -> (1, C, old_h, old_w): the embedding as a C-channel image over the patch grid.
    as_image = grid_tokens.float().reshape(batch, old_h, old_w, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(as_image, size=(new_h, new_w), mode=mode, align_corners=False, antialias=antialias)
    # (1, C, new_h, new_w) -> (1, new_h·new_w, C), back in row-major patch order.
    grid_tokens = resized.permute(0, 2, 3, 1).reshape(batch, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid_tokens], dim=1)
