"""MobileViT (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
ICLR 2022, arXiv:2110.02178).

MobileViT keeps a MobileNetV2 backbone (MV2 inverted residuals, Sandler et al. 2018) and replaces three of its later
stages' tails by *MobileViT blocks*: a local n×n convolution, a 1×1 projection to the transformer width ``d``, a
transformer that mixes information *between* patches (each pixel position inside a p×p patch attends over the same
position of every other patch), folding back to a map, a 1×1 projection, and an n×n fusion conv over
``concat(input, output)``. Convolutions supply locality, the transformer supplies global context, so the model needs
no positional embedding and runs at any resolution.

Any resolution: the unfold needs H and W to be multiples of the patch size. Like the reference implementation
(apple/ml-cvnets, and timm which follows it) the block bilinearly resizes the map up to the next multiple
(``align_corners=False``) before unfolding and resizes back afterwards, so 224×224 or 200×296 inputs work and give
the reference's numbers. The minimum input is 32×32 (one pixel at stride 32).

Parameter names follow edgezoo's own scheme; ``edgezoo.convert.mobilevit`` maps timm's checkpoints onto them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import (
    Attention,
    ConvNormAct,
    DropPath,
    InvertedResidual,
    Mlp,
    check_drop_rate,
    drop_path_rates,
    make_divisible,
    to_2tuple,
)
from ..registry import register_model
from ._base import (
    EdgeModel,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
)

FAMILY = "mobilevit"

# The network downsamples by 32; below 32 px the last stage would have less than one pixel of real content.
MIN_INPUT_SIZE = 32

# ml-cvnets trains MobileViT on raw [0, 1] pixels: no mean/std normalisation.
MOBILEVIT_MEAN = (0.0, 0.0, 0.0)
MOBILEVIT_STD = (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Variant table (paper Table 4 / Appendix A)
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MobileViTStage:
    """One stage: ``num_mv2`` MV2 blocks (the first one strided), then optionally one MobileViT block.

    ``transformer_dim`` is the paper's ``d`` and ``transformer_depth`` its ``L``; ``None``/0 means an MV2-only stage.
    """

    out_chs: int
    stride: int
    num_mv2: int
    transformer_dim: int | None = None
    transformer_depth: int = 0

    @property
    def has_transformer(self) -> bool:
        return self.transformer_dim is not None


@dataclass(frozen=True)
class MobileViTVariant:
    """A MobileViT size. All MobileViT blocks share the patch size, head count, MLP ratio and kernel size."""

    stem_chs: int
    expand_ratio: float  # MV2 expansion factor: 2 for XXS, 4 for XS and S (paper §4.1)
    stages: tuple[MobileViTStage, ...]
    num_features: int  # width of the final 1×1 conv before pooling
    patch_size: int = 2  # h = w = 2 in every MobileViT block (paper Table 4)
    num_heads: int = 4
    mlp_ratio: float = 2.0  # transformer FFN hidden width = 2·d
    kernel_size: int = 3  # the n×n of the local and fusion convs
    act: str = "silu"  # Swish everywhere (paper §4.1)
    imagenet_top1: float | None = None  # ImageNet-1k top-1 reported in the paper (Table 1(b))


VARIANTS: dict[str, MobileViTVariant] = {
    "mobilevit_xxs": MobileViTVariant(
        stem_chs=16,  # 3×3 stride-2 conv, 256 -> 128
        expand_ratio=2.0,
        stages=(
            MobileViTStage(out_chs=16, stride=1, num_mv2=1),  # 128×128
            MobileViTStage(out_chs=24, stride=2, num_mv2=3),  # 128 -> 64
            MobileViTStage(out_chs=48, stride=2, num_mv2=1, transformer_dim=64, transformer_depth=2),  # 64 -> 32
            MobileViTStage(out_chs=64, stride=2, num_mv2=1, transformer_dim=80, transformer_depth=4),  # 32 -> 16
            MobileViTStage(out_chs=80, stride=2, num_mv2=1, transformer_dim=96, transformer_depth=3),  # 16 -> 8
        ),
        num_features=320,  # 8×8, then global pool
        imagenet_top1=69.0,
    ),
    "mobilevit_xs": MobileViTVariant(
        stem_chs=16,  # 3×3 stride-2 conv, 256 -> 128
        expand_ratio=4.0,
        stages=(
            MobileViTStage(out_chs=32, stride=1, num_mv2=1),  # 128×128
            MobileViTStage(out_chs=48, stride=2, num_mv2=3),  # 128 -> 64
            MobileViTStage(out_chs=64, stride=2, num_mv2=1, transformer_dim=96, transformer_depth=2),  # 64 -> 32
            MobileViTStage(out_chs=80, stride=2, num_mv2=1, transformer_dim=120, transformer_depth=4),  # 32 -> 16
            MobileViTStage(out_chs=96, stride=2, num_mv2=1, transformer_dim=144, transformer_depth=3),  # 16 -> 8
        ),
        num_features=384,  # 8×8, then global pool
        imagenet_top1=74.8,
    ),
    "mobilevit_s": MobileViTVariant(
        stem_chs=16,  # 3×3 stride-2 conv, 256 -> 128
        expand_ratio=4.0,
        stages=(
            MobileViTStage(out_chs=32, stride=1, num_mv2=1),  # 128×128
            MobileViTStage(out_chs=64, stride=2, num_mv2=3),  # 128 -> 64
            MobileViTStage(out_chs=96, stride=2, num_mv2=1, transformer_dim=144, transformer_depth=2),  # 64 -> 32
            MobileViTStage(out_chs=128, stride=2, num_mv2=1, transformer_dim=192, transformer_depth=4),  # 32 -> 16
            MobileViTStage(out_chs=160, stride=2, num_mv2=1, transformer_dim=240, transformer_depth=3),  # 16 -> 8
        ),
        num_features=640,  # 8×8, then global pool
        imagenet_top1=78.4,
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------
class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer (LN → MHSA → residual, LN → FFN → residual), as in ViT.

    MobileViT uses Swish in the FFN. Stochastic depth drops each residual branch per sample.
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, act: str, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def unfold_patches(x: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """``(B, C, H, W)`` → ``(B·P, N, C)``: one token sequence per pixel position inside a patch.

    ``P = ph·pw`` is the number of pixels in a patch and ``N = (H/ph)·(W/pw)`` the number of patches; sequence
    ``b·P + i·pw + j`` holds pixel ``(i, j)`` of every patch of image ``b``, patches in row-major order. Attention
    over such a sequence is the paper's "inter-patch" global mixing (Fig. 1(b)). H and W must be multiples of the
    patch size.
    """
    batch, chans, height, width = x.shape
    patch_h, patch_w = patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    # (B, C, H, W) -> (B, C, grid_h, patch_h, grid_w, patch_w)
    x = x.reshape(batch, chans, grid_h, patch_h, grid_w, patch_w)
    # -> (B, patch_h, patch_w, grid_h, grid_w, C) -> (B·P, N, C)
    x = x.permute(0, 3, 5, 2, 4, 1)
    return x.reshape(batch * patch_h * patch_w, grid_h * grid_w, chans)


def fold_patches(tokens: Tensor, *, batch: int, grid: tuple[int, int], patch_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`unfold_patches`: ``(B·P, N, C)`` → ``(B, C, grid_h·ph, grid_w·pw)``."""
    grid_h, grid_w = grid
    patch_h, patch_w = patch_size
    chans = tokens.shape[-1]
    # (B·P, N, C) -> (B, patch_h, patch_w, grid_h, grid_w, C)
    x = tokens.reshape(batch, patch_h, patch_w, grid_h, grid_w, chans)
    # -> (B, C, grid_h, patch_h, grid_w, patch_w) -> (B, C, H, W)
    x = x.permute(0, 5, 3, 1, 4, 2)
    return x.reshape(batch, chans, grid_h * patch_h, grid_w * patch_w)


class MobileViTBlock(nn.Module):
    """The MobileViT block (paper §3.1, Fig. 1(b)): local conv, unfold, transformer, fold, fuse with the input.

    Input and output have ``chs`` channels and the same spatial size. Maps whose size is not a multiple of the patch
    size are bilinearly resized up to the next multiple for the transformer and back afterwards (ml-cvnets'
    behaviour; padding would instead need masked attention).
    """

    def __init__(
        self,
        chs: int,
        *,
        transformer_dim: int,
        transformer_depth: int,
        patch_size: int,
        num_heads: int,
        mlp_ratio: float,
        kernel_size: int,
        act: str,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        # local representation: n×n conv (spatial context), then 1×1 projection to the transformer width d
        self.conv_local = ConvNormAct(chs, chs, kernel_size, act=act)
        self.proj_in = nn.Conv2d(chs, transformer_dim, 1, bias=False)
        # global representation over patches
        layer: dict[str, Any] = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, act=act, drop_path=drop_path)
        self.transformer = nn.Sequential(
            *[TransformerLayer(transformer_dim, **layer) for _ in range(transformer_depth)]
        )
        self.norm = nn.LayerNorm(transformer_dim)
        # back to the block's width, then fuse with the block input
        self.proj_out = ConvNormAct(transformer_dim, chs, 1, act=act)
        self.conv_fusion = ConvNormAct(2 * chs, chs, kernel_size, act=act)
        self.patch_size = to_2tuple(patch_size, name="patch_size")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.proj_in(self.conv_local(x))

        batch, _, height, width = x.shape
        patch_h, patch_w = self.patch_size
        grid_h, grid_w = math.ceil(height / patch_h), math.ceil(width / patch_w)
        resized = (grid_h * patch_h, grid_w * patch_w) != (height, width)
        if resized:
            x = F.interpolate(x, size=(grid_h * patch_h, grid_w * patch_w), mode="bilinear", align_corners=False)

        tokens = self.norm(self.transformer(unfold_patches(x, self.patch_size)))
        x = fold_patches(tokens, batch=batch, grid=(grid_h, grid_w), patch_size=self.patch_size)

        if resized:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        x = self.proj_out(x)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------
class MobileViT(EdgeModel):
    """MobileViT classifier / backbone.

    Feature levels (``feature_info``): the outputs of stages 0–3 (strides 2, 4, 8, 16) and of the final 1×1 conv
    (stride 32), as in timm.
    """

    feature_trunk = "stages"
    feature_tail_modules = ("final_conv",)  # only level 4 (the last) uses it

    def __init__(
        self,
        variant: MobileViTVariant,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        default_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        validate_num_classes(num_classes)
        check_drop_rate(drop_rate)
        self.variant = variant
        self.num_classes = num_classes
        act = variant.act

        self.stem = ConvNormAct(in_chans, variant.stem_chs, 3, stride=2, act=act)

        depths = [s.num_mv2 + (1 if s.has_transformer else 0) for s in variant.stages]
        dpr = drop_path_rates(drop_path_rate, depths)
        stages: list[nn.Module] = []
        feature_info = []
        in_chs, reduction = variant.stem_chs, 2
        for stage_idx, stage in enumerate(variant.stages):
            blocks: list[nn.Module] = []
            for block_idx in range(stage.num_mv2):
                stride = stage.stride if block_idx == 0 else 1
                blocks.append(
                    InvertedResidual(
                        in_chs,
                        stage.out_chs,
                        mid_chs=make_divisible(in_chs * variant.expand_ratio),
                        kernel_size=3,
                        stride=stride,
                        act=act,
                        drop_path=dpr[stage_idx][block_idx],
                    )
                )
                in_chs = stage.out_chs
            reduction *= stage.stride
            if stage.has_transformer:
                blocks.append(
                    MobileViTBlock(
                        stage.out_chs,
                        transformer_dim=stage.transformer_dim,
                        transformer_depth=stage.transformer_depth,
                        patch_size=variant.patch_size,
                        num_heads=variant.num_heads,
                        mlp_ratio=variant.mlp_ratio,
                        kernel_size=variant.kernel_size,
                        act=act,
                        drop_path=dpr[stage_idx][-1],
                    )
                )
            stages.append(nn.Sequential(*blocks))
            feature_info.append(feature_entry(stage.out_chs, reduction, f"stages.{stage_idx}"))
        self.stages = nn.Sequential(*stages)

        self.final_conv = ConvNormAct(in_chs, variant.num_features, 1, act=act)
        # the last stage's own output is not a feature level: the final 1×1 conv's output at the same stride is
        feature_info[-1] = feature_entry(variant.num_features, reduction, "final_conv")
        self.feature_info = feature_info
        self.num_features = variant.num_features

        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = classifier_or_identity(self.num_features, num_classes)
        self.default_cfg = dict(default_cfg) if default_cfg is not None else _default_cfg()

    # --- EdgeModel contract -----------------------------------------------------------------------------------------
    @staticmethod
    def _check_input(x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
            raise ValueError(
                f"MobileViT input height and width must be >= {MIN_INPUT_SIZE} (network stride 32), "
                f"got {height}×{width}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.final_conv(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        validate_num_classes(num_classes)
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be None or 'avg' for MobileViT, got {global_pool!r}")
        self.num_classes = num_classes
        self.classifier = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        self._check_input(x)
        # level i is the output of stage i, except the last: the final 1×1 conv's output at the same stride
        *body, last = self.stages
        levels = [*body, lambda t: self.final_conv(last(t))]
        return forward_stages(x, levels, set(indices), stem=self.stem)

    def head_modules(self) -> list[str]:
        return ["head_drop", "classifier"]


# --------------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------------
def _default_cfg(input_size: tuple[int, int, int] = (3, 256, 256)) -> dict[str, Any]:
    return make_default_cfg(
        input_size=input_size,
        mean=MOBILEVIT_MEAN,
        std=MOBILEVIT_STD,
        crop_pct=0.9,
        interpolation="bicubic",
        first_conv="stem.conv",
        classifier="classifier",
        min_input_size=(3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        pool_size=(8, 8),
    )


def _make_builder(name: str):
    variant = VARIANTS[name]

    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
    ) -> MobileViT:
        """Build ``{name}``. ``img_size`` only sets ``default_cfg['input_size']``: the model runs at any size ≥ 32.

        ``drop_rate`` is dropout before the classifier.
        """
        cfg_size = (in_chans, 256, 256)
        if img_size is not None:
            height, width = to_2tuple(img_size, name="img_size")
            if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
                raise ValueError(f"img_size must be >= {MIN_INPUT_SIZE} for MobileViT, got {img_size!r}")
            cfg_size = (in_chans, height, width)
        return MobileViT(
            variant,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            default_cfg=_default_cfg(cfg_size),
        )

    build.__name__ = name
    build.__doc__ = (build.__doc__ or "").replace("{name}", name)
    return build


for _name, _variant in VARIANTS.items():
    register_model(
        _name,
        family=FAMILY,
        builder=_make_builder(_name),
        default_cfg=_default_cfg(),
        imagenet_top1=_variant.imagenet_top1,
    )
