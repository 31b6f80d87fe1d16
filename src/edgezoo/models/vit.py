"""Vision Transformer (ViT).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021
(arXiv:2010.11929); the Tiny and Small widths come from Touvron et al., "Training data-efficient image transformers
& distillation through attention" (DeiT), ICML 2021.

The image is cut into P×P patches, each linearly embedded (a strided conv); a learned class token is prepended and a
learned absolute position embedding added; a stack of pre-norm transformer encoder blocks (LayerNorm → multi-head
self-attention → residual, LayerNorm → GELU MLP → residual) follows, then a final LayerNorm. The classifier reads the
class token (the paper's choice) or, with ``global_pool="avg"``, the mean of the patch tokens (then the final
LayerNorm is applied after pooling, as in the reference implementation).

Any resolution: the position embedding is learned for the grid of ``img_size``; an input with another patch grid
gets a bicubically resized copy of it (paper §3.2), so the model runs on any H×W that are multiples of P.
Checkpoints trained at another size are resized once at load time by :meth:`VisionTransformer.adapt_state_dict`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import Attention
from ..layers.drop import DropPath, drop_path_rates
from ..layers.helpers import to_2tuple
from ..layers.mlp import Mlp
from ..layers.patch_embed import PatchEmbed, check_patch_size, resample_patch_kernel
from ..layers.pos_embed import resample_pos_embed, square_grid
from ..registry import register_model
from ._base import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    EdgeModel,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
)

# The original JAX implementation normalises with eps=1e-6 (not PyTorch's default 1e-5); checkpoints depend on it.
LAYER_NORM_EPS = 1e-6
GLOBAL_POOLS = ("token", "avg")
NUM_PREFIX_TOKENS = 1  # the class token
# timm's features_only default for ViT: the last three blocks.
DEFAULT_FEATURE_LEVELS = 3


@dataclass(frozen=True)
class ViTVariant:
    """One row of the ViT model table (ViT paper Table 1; DeiT Table 1 for Ti and S)."""

    patch_size: int  # P: side of the square patches, so the token grid is (H/P)×(W/P)
    embed_dim: int  # D: hidden size of every token
    depth: int  # number of encoder blocks
    num_heads: int  # attention heads (head dim = D / heads = 64 in every variant)
    mlp_dim: int  # hidden width of each block's MLP (4·D)
    img_size: int = 224  # training resolution, which sets the learned position-embedding grid
    imagenet_top1: float | None = None  # timm's default weights, ImageNet-1k val top-1 (%)


VIT_VARIANTS: dict[str, ViTVariant] = {
    # 224² input → 14×14 = 196 patch tokens + 1 class token through every block.
    "vit_tiny_patch16_224": ViTVariant(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_dim=768, imagenet_top1=75.454),
    # 224² → 14×14 tokens.
    "vit_small_patch16_224": ViTVariant(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536, imagenet_top1=81.384),
    # 224² → 14×14 tokens.
    "vit_base_patch16_224": ViTVariant(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, imagenet_top1=85.096),
    # 224² → 7×7 = 49 tokens: 4× fewer tokens than B/16, hence ~4× fewer MACs at nearly the same parameter count.
    "vit_base_patch32_224": ViTVariant(patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, imagenet_top1=80.716),
    # 224² → 14×14 tokens.
    "vit_large_patch16_224": ViTVariant(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, imagenet_top1=85.834),
}


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (ViT paper Eq. 2–3): ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.

    Pre-norm keeps an identity path from input to output through the whole stack, which is what lets deep ViTs
    train without warm-up tricks.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_dim, act="gelu")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def class_token_forward(block: EncoderBlock, x: Tensor) -> Tensor:
    """``block(x)[:, :1]`` computed for the class token alone: the inference form of the last block under token pooling.

    LayerNorm, the projections and the MLP act on each token separately, so the class token's output depends on
    the other tokens only through the keys and values of attention. Keys and values are computed for every token;
    the query, attention output, projection and MLP for the class token only. Returns ``(B, 1, D)``, equal to the
    full block's class token up to float rounding, for about 15 % of the block's MACs (ViT-Ti/16 at 224²: 87 of
    1,258 MMACs saved). The query and key/value weights are row slices (views) of the fused qkv projection.
    """
    attn = block.attn
    batch, tokens, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    h = block.norm1(x)
    q = F.linear(h[:, :NUM_PREFIX_TOKENS], w[:dim], None if b is None else b[:dim])
    kv = F.linear(h, w[dim:], None if b is None else b[dim:])
    q = q.reshape(batch, NUM_PREFIX_TOKENS, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, NUM_PREFIX_TOKENS, dim)
    c = x[:, :NUM_PREFIX_TOKENS] + attn.proj(out)
    return c + block.mlp(block.norm2(c))


def _check_global_pool(global_pool: Any) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    return global_pool


def vit_default_cfg(variant: ViTVariant, img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Preprocessing of the reference weights: Inception mean/std (0.5), 90% center crop, bicubic resize."""
    h, w = img_size or (variant.img_size, variant.img_size)
    return make_default_cfg(
        input_size=(3, h, w),
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=0.9,
        interpolation="bicubic",
        first_conv="patch_embed.proj",
        classifier="head",
    )


class VisionTransformer(EdgeModel):
    """ViT classifier; ``forward_features`` gives the normalised tokens ``(B, 1 + N, D)``, class token first."""

    feature_trunk = "blocks"

    # features-only mode without out_indices: the last three blocks (timm's default for ViT)
    default_out_indices = tuple(range(-DEFAULT_FEATURE_LEVELS, 0))

    def __init__(
        self,
        *,
        variant: ViTVariant,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        self.num_classes = validate_num_classes(num_classes)
        self.global_pool = _check_global_pool(global_pool)
        patch = check_patch_size(variant.patch_size)
        self.img_size = to_2tuple(variant.img_size if img_size is None else img_size, name="img_size")
        dim = self.num_features = variant.embed_dim

        self.patch_embed = PatchEmbed(in_chans=in_chans, embed_dim=dim, patch_size=patch)
        self.grid = self.patch_embed.img_size_grid(
            self.img_size, why="the position embedding is learned per patch of that grid"
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PREFIX_TOKENS + self.grid[0] * self.grid[1], dim))
        rates = drop_path_rates(drop_path_rate, [variant.depth])[0]  # 0 at the first block → rate at the last
        self.blocks = nn.Sequential(
            *[EncoderBlock(dim=dim, num_heads=variant.num_heads, mlp_dim=variant.mlp_dim, drop_path=r) for r in rates]
        )
        # Token pooling reads the class token, which is normalised with the rest; average pooling normalises the
        # pooled vector instead (reference layout: `norm` for token pooling, `fc_norm` for average pooling).
        pool_after_norm = self.global_pool == "avg"
        self.norm = nn.Identity() if pool_after_norm else nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS) if pool_after_norm else nn.Identity()
        self.head = classifier_or_identity(dim, self.num_classes)

        self.default_cfg = vit_default_cfg(variant, self.img_size)
        self.feature_info = [feature_entry(dim, patch, f"blocks.{i}") for i in range(variant.depth)]
        # Set by deploy_logits_only() (fuse): forward runs the last block for the class token only.
        self.class_token_last_block = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal(0.02) linears and position embedding, tiny class token, zero biases (JAX reference)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # --- position embedding at any resolution ----------------------------------------------------------------
    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Image → tokens ``(B, 1 + N, D)`` with class token and position embedding; also returns the patch grid."""
        patches = self.patch_embed(x)  # (B, D, gh, gw)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)  # (B, gh·gw, D), row-major patch order
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        pos = resample_pos_embed(self.pos_embed, new_grid=grid, old_grid=self.grid, num_prefix_tokens=NUM_PREFIX_TOKENS)
        return torch.cat([cls, tokens], dim=1) + pos, grid

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a checkpoint to this model's patch size and grid (called by the loader before strict loading).

        * A patch-embedding kernel of another patch size is resized with FlexiViT's pseudo-inverse resize
          (:func:`~edgezoo.layers.patch_embed.resample_patch_kernel`), so e.g. a /16 checkpoint serves a /8 model.
        * The position embedding is resized to this model's grid. The checkpoint's grid is the square one its
          token count implies (all reference ViTs train on square images); a non-square count must already match.
        """
        out = dict(state_dict)
        kernel = out.get("patch_embed.proj.weight")
        own_patch = tuple(self.patch_embed.proj.weight.shape[-2:])
        if kernel is not None and kernel.dim() == 4 and tuple(kernel.shape[-2:]) != own_patch:
            out["patch_embed.proj.weight"] = resample_patch_kernel(kernel, own_patch)
        pos = out.get("pos_embed")
        if pos is None or pos.ndim != 3:
            return out
        num_grid_tokens = pos.shape[1] - NUM_PREFIX_TOKENS
        old_grid = square_grid(num_grid_tokens)
        if old_grid is None:
            if num_grid_tokens == self.grid[0] * self.grid[1]:
                old_grid = self.grid
            else:
                raise ValueError(
                    f"checkpoint pos_embed has {num_grid_tokens} patch positions, which is not a square grid; "
                    f"cannot resize it to this model's {self.grid[0]}x{self.grid[1]} grid"
                )
        if old_grid != self.grid:
            out["pos_embed"] = resample_pos_embed(pos, new_grid=self.grid, old_grid=old_grid, num_prefix_tokens=NUM_PREFIX_TOKENS)
        return out

    # --- inference form ---------------------------------------------------------------------------------------
    def deploy_logits_only(self) -> str | None:
        """Let ``forward`` skip work its logits never read (called by :func:`edgezoo.deploy.fuse`).

        With token pooling the logits read only the class token, so in eval mode the last block runs through
        :func:`class_token_forward`. ``forward_features``/``forward_intermediates`` are unchanged (they return every
        token), and the pooling is checked per call, so ``reset_classifier(global_pool="avg")`` still works.
        Nothing is added to the state dict. Returns a description of the rewrite, or ``None`` if nothing is skipped.
        """
        if self.global_pool != "token" or len(self.blocks) == 0:
            return None
        self.class_token_last_block = True
        return f"blocks.{len(self.blocks) - 1}: class token only (keys/values for all tokens)"

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if not self.class_token_last_block or self.features_only or self.training or self.global_pool != "token":
            return super().forward(x)
        tokens, _ = self._embed(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return self.forward_head(self.norm(class_token_forward(self.blocks[-1], tokens)))

    # --- EdgeModel contract ----------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        tokens, _ = self._embed(x)
        return self.norm(self.blocks(tokens))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x[:, NUM_PREFIX_TOKENS:].mean(dim=1)
        else:
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (randomly initialised) classifier; ``global_pool`` may switch between "token" and "avg" reading."""
        self.num_classes = validate_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool)
        self.head = classifier_or_identity(self.num_features, self.num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Outputs of the chosen blocks as NCHW maps ``(B, D, H/P, W/P)`` (class token dropped, no final norm)."""
        tokens, (gh, gw) = self._embed(x)

        def to_map(tokens: Tensor) -> Tensor:
            grid_tokens = tokens[:, NUM_PREFIX_TOKENS:]  # (B, gh·gw, D)
            return grid_tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

        return forward_stages(tokens, self.blocks, set(indices), output=to_map)

    def head_modules(self) -> list[str]:
        return ["norm", "fc_norm", "head"]


def _create_vit(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    patch_size: int | None = None,
    global_pool: str = "token",
) -> VisionTransformer:
    """Builder behind every registered ViT; ``patch_size`` and ``global_pool`` are the family's overrides."""
    variant = VIT_VARIANTS[name]
    if patch_size is not None:
        variant = dataclasses.replace(variant, patch_size=check_patch_size(patch_size))
    return VisionTransformer(
        variant=variant,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        global_pool=global_pool,
    )


for _name, _variant in VIT_VARIANTS.items():
    register_model(
        _name,
        family="vit",
        builder=functools.partial(_create_vit, _name),
        default_cfg=vit_default_cfg(_variant),
        imagenet_top1=_variant.imagenet_top1,
    )
