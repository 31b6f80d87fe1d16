"""MLP-Mixer.

Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021 (arXiv:2105.01601).

A per-patch linear embedding (a strided conv) turns the image into an S×C table (S patches, C channels). Each Mixer
layer then alternates two MLPs, both pre-norm with a residual connection (paper Eq. 1):

* token mixing: an MLP applied to every *column* of the table, i.e. across the S patches, one channel at a time.
  It mixes spatial information, and its weights are S×D_S matrices, so it exists for one patch grid only;
* channel mixing: an MLP applied to every *row*, across the C channels of one patch (a 1×1 conv, in effect).

A final LayerNorm, global average pooling over patches and a linear classifier complete the model.

Fixed grid: because the token-mixing weights have one row per patch position, the input size is fixed at
creation (``img_size=``); another input size raises a ``ValueError`` naming both sizes instead of silently
producing wrong shapes. Stochastic depth uses the same rate in every block, as the reference implementation does.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..layers.drop import DropPath
from ..layers.helpers import to_2tuple
from ..layers.mlp import Mlp
from ..layers.patch_embed import PatchEmbed, check_patch_size
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

# The JAX reference normalises with eps=1e-6; released checkpoints depend on it.
LAYER_NORM_EPS = 1e-6
# timm's features_only default for Mixer: the last three blocks.
DEFAULT_FEATURE_LEVELS = 3


@dataclass(frozen=True)
class MixerVariant:
    """One row of the Mixer paper's Table 1 (S/B/L widths at patch 32 or 16)."""

    patch_size: int  # P: side of the square patches; S = (H/P)·(W/P) tokens
    num_blocks: int  # number of Mixer layers
    hidden_dim: int  # C: channels of every patch token
    token_mlp_dim: int  # D_S: hidden width of the token-mixing MLP (C/2)
    channel_mlp_dim: int  # D_C: hidden width of the channel-mixing MLP (4·C)
    img_size: int = 224  # resolution the token-mixing MLP is built for
    imagenet_top1: float | None = None  # timm's default weights, ImageNet-1k val top-1 (%); None = no weights


MIXER_VARIANTS: dict[str, MixerVariant] = {
    # 224² input → 7×7 = 49 tokens of 512 channels through all 8 layers.
    "mixer_s32_224": MixerVariant(patch_size=32, num_blocks=8, hidden_dim=512, token_mlp_dim=256, channel_mlp_dim=2048),
    # 224² → 14×14 = 196 tokens of 512.
    "mixer_s16_224": MixerVariant(patch_size=16, num_blocks=8, hidden_dim=512, token_mlp_dim=256, channel_mlp_dim=2048),
    # 224² → 7×7 tokens of 768 through 12 layers.
    "mixer_b32_224": MixerVariant(patch_size=32, num_blocks=12, hidden_dim=768, token_mlp_dim=384, channel_mlp_dim=3072),
    # 224² → 14×14 tokens of 768.
    "mixer_b16_224": MixerVariant(
        patch_size=16, num_blocks=12, hidden_dim=768, token_mlp_dim=384, channel_mlp_dim=3072, imagenet_top1=76.602
    ),
    # 224² → 7×7 tokens of 1024 through 24 layers.
    "mixer_l32_224": MixerVariant(patch_size=32, num_blocks=24, hidden_dim=1024, token_mlp_dim=512, channel_mlp_dim=4096),
    # 224² → 14×14 tokens of 1024.
    "mixer_l16_224": MixerVariant(
        patch_size=16, num_blocks=24, hidden_dim=1024, token_mlp_dim=512, channel_mlp_dim=4096, imagenet_top1=72.054
    ),
}


class MixerBlock(nn.Module):
    """One Mixer layer: ``x + TokenMLP(LN(x)ᵀ)ᵀ`` then ``x + ChannelMLP(LN(x))`` on ``(B, S, C)`` tokens."""

    def __init__(self, *, num_tokens: int, dim: int, token_mlp_dim: int, channel_mlp_dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.token_mlp = Mlp(num_tokens, token_mlp_dim, act="gelu")  # acts along the S axis
        self.channel_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.channel_mlp = Mlp(dim, channel_mlp_dim, act="gelu")  # acts along the C axis
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # Token mixing: transpose to (B, C, S) so the MLP's Linear layers run across patches, then back.
        mixed = self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.channel_mlp(self.channel_norm(x)))


def mixer_default_cfg(variant: MixerVariant, img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Preprocessing of the reference weights: Inception mean/std (0.5), 87.5% center crop, bicubic; fixed size."""
    h, w = img_size or (variant.img_size, variant.img_size)
    return make_default_cfg(
        input_size=(3, h, w),
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=0.875,
        interpolation="bicubic",
        first_conv="stem.proj",
        classifier="head",
        fixed_input_size=True,
    )


class MlpMixer(EdgeModel):
    """MLP-Mixer classifier; ``forward_features`` gives the normalised patch tokens ``(B, S, C)``."""

    feature_trunk = "blocks"

    # features-only mode without out_indices: the last three blocks (timm's default)
    default_out_indices = tuple(range(-DEFAULT_FEATURE_LEVELS, 0))

    def __init__(
        self,
        *,
        variant: MixerVariant,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = validate_num_classes(num_classes)
        patch = check_patch_size(variant.patch_size)
        self.img_size = to_2tuple(variant.img_size if img_size is None else img_size, name="img_size")
        dim = self.num_features = variant.hidden_dim

        # The paper's "per-patch fully-connected layer".
        self.stem = PatchEmbed(in_chans=in_chans, embed_dim=dim, patch_size=patch)
        self.grid = self.stem.img_size_grid(self.img_size, why="the token-mixing MLP is built for that patch grid")
        num_tokens = self.grid[0] * self.grid[1]
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    num_tokens=num_tokens,
                    dim=dim,
                    token_mlp_dim=variant.token_mlp_dim,
                    channel_mlp_dim=variant.channel_mlp_dim,
                    drop_path=drop_path_rate,
                )
                for _ in range(variant.num_blocks)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = classifier_or_identity(dim, self.num_classes)

        self.default_cfg = mixer_default_cfg(variant, self.img_size)
        self.feature_info = [feature_entry(dim, patch, f"blocks.{i}") for i in range(variant.num_blocks)]
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linears with near-zero biases (the paper's JAX code), LeCun-normal patch embedding."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    if name == "head":
                        nn.init.zeros_(module.bias)
                    else:
                        nn.init.normal_(module.bias, std=1e-6)
        fan_in = self.stem.proj.in_channels * self.stem.proj.kernel_size[0] * self.stem.proj.kernel_size[1]
        nn.init.trunc_normal_(self.stem.proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(self.stem.proj.bias)

    def _tokens(self, x: Tensor) -> Tensor:
        """Image → patch tokens ``(B, S, C)``; raises ``ValueError`` for an input size other than ``img_size``."""
        h, w = x.shape[-2], x.shape[-1]
        if (h, w) != self.img_size:
            raise ValueError(
                f"input size {h}x{w} does not match this MLP-Mixer's img_size {self.img_size[0]}x{self.img_size[1]}: "
                f"its token-mixing MLP is tied to the {self.grid[0]}x{self.grid[1]} patch grid; resize the input or "
                f"create the model with img_size=({h}, {w})"
            )
        return self.stem(x).flatten(2).transpose(1, 2)  # (B, C, gh, gw) -> (B, gh·gw, C)

    # --- EdgeModel contract ----------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self._tokens(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=1)  # global average over patches
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (randomly initialised) classifier; Mixer only pools by averaging (``global_pool`` None or "avg")."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be 'avg' (or None) for MLP-Mixer, got {global_pool!r}")
        self.num_classes = validate_num_classes(num_classes)
        self.head = classifier_or_identity(self.num_features, self.num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Outputs of the chosen blocks as NCHW maps ``(B, C, H/P, W/P)`` (no final norm)."""
        tokens = self._tokens(x)
        gh, gw = self.grid

        def to_map(tokens: Tensor) -> Tensor:
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

        return forward_stages(tokens, self.blocks, set(indices), output=to_map)

    def head_modules(self) -> list[str]:
        return ["norm", "head"]


def _create_mixer(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    patch_size: int | None = None,
) -> MlpMixer:
    """Builder behind every registered Mixer; ``patch_size`` is the family's override (e.g. 4 for 32×32 images)."""
    variant = MIXER_VARIANTS[name]
    if patch_size is not None:
        variant = dataclasses.replace(variant, patch_size=check_patch_size(patch_size))
    return MlpMixer(variant=variant, num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_path_rate=drop_path_rate)


for _name, _variant in MIXER_VARIANTS.items():
    register_model(
        _name,
        family="mlp_mixer",
        builder=functools.partial(_create_mixer, _name),
        default_cfg=mixer_default_cfg(_variant),
        imagenet_top1=_variant.imagenet_top1,
    )
