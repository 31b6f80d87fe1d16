"""Cross-covariance attention (XCA) from XCiT (El-Nouby et al., 2021, arXiv:2106.09681), used by EdgeNeXt's SDTA.

Ordinary self-attention mixes *tokens* with an N×N map, so its cost grows with N² = (H·W)². XCA transposes the
problem: per head it builds a d×d map between *channels* from the cross-covariance of L2-normalised queries and keys
taken over all tokens, which is linear in the number of tokens and works at any input resolution. Normalising
queries and keys bounds the logits to [-1, 1], so a learnable per-head temperature τ replaces the usual 1/√d scale:

    A_h = softmax(τ_h · q̂_hᵀ k̂_h)  (d × d),   out_h = v_h A_hᵀ  (N × d),   q̂ = q / ‖q‖ over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=-1)`` with the norm broadcast by the division instead of ``expand_as``: the same
    numbers, but a graph phone runtimes delegate whole (XNNPACK has no expand)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, *, attn_drop: float = 0.0) -> Tensor:
    """XCA's core, ``softmax(τ · q̂ k̂ᵀ) v`` for ``(B, heads, d, N)`` inputs, ``q̂``/``k̂`` L2-normalised over N.

    The d × d map is small: explicit matmuls beat SDPA's dispatch here, and τ scales d² logits, not d·N queries.
    Returns ``(B, heads, d, N)``.
    """
    attn = (_l2_normalize(q) @ _l2_normalize(k).transpose(-2, -1)) * temperature
    attn = attn.softmax(dim=-1)
    if attn_drop > 0:
        attn = F.dropout(attn, p=attn_drop)
    return attn @ v


class CrossCovarianceAttention(nn.Module):
    """Multi-head XCA over ``(B, N, C)`` tokens: attention across channels, with learnable temperature per head.

    Each head's ``d`` channels play the role of the sequence and the ``N`` tokens that of the features, so the
    attention map is only ``d × d``; it is computed with explicit matmuls (cheaper than SDPA's dispatch at that
    size) and the temperature scales the map rather than the queries.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # One temperature per head, shaped to broadcast over that head's (d × N) query matrix.
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        # (B, N, 3·C) -> (3, B, heads, head_dim, N): channels become the attended axis, tokens the feature axis.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        out = channel_attention(q, k, v, self.temperature, attn_drop=self.attn_drop if self.training else 0.0)
        out = out.permute(0, 3, 1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"
