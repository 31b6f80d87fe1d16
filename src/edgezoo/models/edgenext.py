"""EdgeNeXt (Maaz et al., 2022, "EdgeNeXt: Efficiently Amalgamated CNN-Transformer Architecture for Mobile Vision
Applications", arXiv:2206.10589).

A four-stage ConvNeXt-like hierarchy (patchify stem, stride 4 → 8 → 16 → 32) whose stages mix two encoders:

* **Conv encoder** – depthwise k×k conv, LayerNorm, pointwise inverted-bottleneck MLP, layer scale, residual.
  The kernel grows with depth (3, 5, 7, 9) so the receptive field keeps up as the maps shrink (paper §3.1).
* **SDTA encoder** (split depth-wise transpose attention, §3.2) – the channels are split into ``s`` groups and a
  cascade of 3×3 depthwise convs gives each group a larger receptive field than the previous one (Res2Net-style),
  then cross-covariance attention (XCA, attention across channels, linear in the number of pixels) adds global
  context, followed by the same MLP as the conv encoder. Stage 2 adds a sinusoidal (Fourier) position encoding.

Every stage is fully convolutional or token-count agnostic, so any H×W that survives the stride-32 hierarchy
(≥ 32 px) works; the position encoding is computed for the input's own grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import DropPath, LayerNorm2d, Mlp, check_drop_rate, drop_path_rates, to_2tuple
from ..layers.norm import ChannelNorm2d, fold_affine_into_conv, linear_as_conv1x1
from ..layers.xca import CrossCovarianceAttention, channel_attention
from ..registry import register_model
from ._base import (
    EdgeModel,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
)

# All EdgeNeXt norms are LayerNorms with this epsilon (the reference implementation's choice).
NORM_EPS = 1e-6
STEM_STRIDE = 4  # 4×4 non-overlapping patches
DOWNSAMPLE_STRIDE = 2  # 2×2 non-overlapping conv between stages
SCALE_CONV_KERNEL = 3  # the cascaded depthwise convs inside SDTA
POS_HIDDEN_DIM = 32  # sinusoid features per axis before projecting to the stage width
POS_TEMPERATURE = 10000.0  # longest wavelength of the sinusoids (as in the Transformer / DETR encodings)


# --------------------------------------------------------------------------------------------------------------
# Variant table
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeNeXtStageSpec:
    """One stage of Table 1 / §4 of the paper."""

    dim: int  # channels of every encoder in the stage
    depth: int  # encoders in the stage (conv encoders first, then SDTA encoders)
    kernel_size: int  # depthwise kernel of the conv encoders
    sdta_blocks: int  # how many of the last ``depth`` encoders are SDTA encoders
    heads: int  # XCA heads in the SDTA encoders
    scales: int  # channel groups ``s`` of the SDTA split (the paper's d2 scales)
    pos_embed: bool  # add the Fourier position encoding before XCA

    def __post_init__(self) -> None:
        if not 0 <= self.sdta_blocks <= self.depth:
            raise ValueError(f"sdta_blocks must be in [0, depth={self.depth}], got {self.sdta_blocks!r}")
        if self.scales < 2:
            raise ValueError(f"scales must be >= 2 (one group is passed through unchanged), got {self.scales!r}")


@dataclass(frozen=True)
class EdgeNeXtVariant:
    stages: tuple[EdgeNeXtStageSpec, EdgeNeXtStageSpec, EdgeNeXtStageSpec, EdgeNeXtStageSpec]
    expand_ratio: float = 4.0  # MLP hidden width / dim
    layer_scale_init: float = 1e-6  # initial value of the per-channel residual scales (CaiT-style)
    crop_pct: float = 0.9
    imagenet_top1: float | None = None  # paper, standard ImageNet-1k training


S = EdgeNeXtStageSpec
# Kernel sizes (3, 5, 7, 9), one SDTA encoder closing stages 2–4, split scales (2, 2, 3, 4) and the position encoding
# in stage 2 are shared by all four models; they differ in widths, depths and heads. Resolutions are for 256×256.
VARIANTS: dict[str, EdgeNeXtVariant] = {
    "edgenext_xx_small": EdgeNeXtVariant(
        stages=(
            S(dim=24, depth=2, kernel_size=3, sdta_blocks=0, heads=4, scales=2, pos_embed=False),  # 64×64
            S(dim=48, depth=2, kernel_size=5, sdta_blocks=1, heads=4, scales=2, pos_embed=True),  # 32×32
            S(dim=88, depth=6, kernel_size=7, sdta_blocks=1, heads=4, scales=3, pos_embed=False),  # 16×16
            S(dim=168, depth=2, kernel_size=9, sdta_blocks=1, heads=4, scales=4, pos_embed=False),  # 8×8
        ),
        imagenet_top1=71.2,
    ),
    "edgenext_x_small": EdgeNeXtVariant(
        stages=(
            S(dim=32, depth=3, kernel_size=3, sdta_blocks=0, heads=4, scales=2, pos_embed=False),  # 64×64
            S(dim=64, depth=3, kernel_size=5, sdta_blocks=1, heads=4, scales=2, pos_embed=True),  # 32×32
            S(dim=100, depth=9, kernel_size=7, sdta_blocks=1, heads=4, scales=3, pos_embed=False),  # 16×16
            S(dim=192, depth=3, kernel_size=9, sdta_blocks=1, heads=4, scales=4, pos_embed=False),  # 8×8
        ),
        imagenet_top1=75.0,
    ),
    "edgenext_small": EdgeNeXtVariant(
        stages=(
            S(dim=48, depth=3, kernel_size=3, sdta_blocks=0, heads=8, scales=2, pos_embed=False),  # 64×64
            S(dim=96, depth=3, kernel_size=5, sdta_blocks=1, heads=8, scales=2, pos_embed=True),  # 32×32
            S(dim=160, depth=9, kernel_size=7, sdta_blocks=1, heads=8, scales=3, pos_embed=False),  # 16×16
            S(dim=304, depth=3, kernel_size=9, sdta_blocks=1, heads=8, scales=4, pos_embed=False),  # 8×8
        ),
        crop_pct=0.95,  # the reference weights (USI distillation) were evaluated at 0.95
        imagenet_top1=79.4,
    ),
    "edgenext_base": EdgeNeXtVariant(
        stages=(
            S(dim=80, depth=3, kernel_size=3, sdta_blocks=0, heads=8, scales=2, pos_embed=False),  # 64×64
            S(dim=160, depth=3, kernel_size=5, sdta_blocks=1, heads=8, scales=2, pos_embed=True),  # 32×32
            S(dim=288, depth=9, kernel_size=7, sdta_blocks=1, heads=8, scales=3, pos_embed=False),  # 16×16
            S(dim=584, depth=3, kernel_size=9, sdta_blocks=1, heads=8, scales=4, pos_embed=False),  # 8×8
        ),
        crop_pct=0.95,
        imagenet_top1=82.5,
    ),
}
del S

MIN_INPUT_SIZE = STEM_STRIDE * DOWNSAMPLE_STRIDE ** 3  # 32: the last stage still has a 1×1 map


# --------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------
class Stem(nn.Module):
    """4×4 stride-4 patchify conv + channels-first LayerNorm (ConvNeXt's stem, paper §3)."""

    def __init__(self, *, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=STEM_STRIDE, stride=STEM_STRIDE)
        self.norm = LayerNorm2d(dim, eps=NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Downsample(nn.Module):
    """LayerNorm then a 2×2 stride-2 conv that also changes the width (between stages)."""

    def __init__(self, *, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_dim, eps=NORM_EPS)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=DOWNSAMPLE_STRIDE, stride=DOWNSAMPLE_STRIDE)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x))

    def deploy_form(self) -> nn.Module:
        """Inference form: affine-free channel norm, the LayerNorm affine folded into the (unpadded) conv."""
        folded = fold_affine_into_conv(self.conv, in_scale=self.norm.weight, in_shift=self.norm.bias)
        return nn.Sequential(ChannelNorm2d(self.norm.eps), folded)


class ChannelMlp(nn.Module):
    """LayerNorm → pointwise MLP (expand, GELU, project) → layer scale, on a channels-last ``(B, H, W, C)`` tensor.

    The tail shared by both encoders; pointwise convs are written as ``nn.Linear`` on the channels-last view.
    """

    def __init__(self, *, dim: int, expand_ratio: float, layer_scale_init: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(expand_ratio * dim), act="gelu")
        self.layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_scale * self.mlp(self.norm(x))


class ConvEncoder(nn.Module):
    """Conv encoder (paper Fig. 2, left): depthwise k×k conv, then the channel MLP, added to the input."""

    def __init__(self, *, dim: int, kernel_size: int, expand_ratio: float, layer_scale_init: float, drop_path: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.channel_mlp = ChannelMlp(dim=dim, expand_ratio=expand_ratio, layer_scale_init=layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        branch = self.channel_mlp(branch).permute(0, 3, 1, 2)
        return x + self.drop_path(branch)

    def deploy_form(self) -> nn.Module:
        """The inference form (see :class:`_ConvEncoderNCHW`), used by :func:`edgezoo.deploy.fuse`."""
        return _ConvEncoderNCHW(self)


def _channel_mlp_nchw(mlp: ChannelMlp) -> nn.Sequential:
    """ChannelMlp as NCHW ops: affine-free channel norm, 1×1 conv (LN affine folded in), GELU, 1×1 conv (layer
    scale folded in)."""
    return nn.Sequential(
        ChannelNorm2d(mlp.norm.eps),
        linear_as_conv1x1(mlp.mlp.fc1, in_scale=mlp.norm.weight, in_shift=mlp.norm.bias),
        mlp.mlp.act,
        linear_as_conv1x1(mlp.mlp.fc2, out_scale=mlp.layer_scale),
    )


class _ConvEncoderNCHW(nn.Module):
    """Inference form of :class:`ConvEncoder` that never leaves NCHW.

    The training form permutes to channels-last so the pointwise MLP is an ``nn.Linear`` and LayerNorm is
    torch's; exported as is, every block costs inference engines two layout transposes plus the reorders around
    them (a quarter of OpenVINO's time on edgenext_xx_small). Here the same function runs as depthwise conv →
    channel norm → 1×1 conv → GELU → 1×1 conv, with the LayerNorm affine and the layer scale folded into the 1×1
    convs, so no transposes and two fewer elementwise ops remain.
    """

    def __init__(self, enc: ConvEncoder) -> None:
        super().__init__()
        self.conv_dw = enc.conv_dw
        self.mlp = _channel_mlp_nchw(enc.channel_mlp)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.conv_dw(x))


class FourierPositionEncoding(nn.Module):
    """2-D sinusoidal position encoding (as in DETR/XCiT) projected to ``dim`` channels by a 1×1 conv.

    Row and column coordinates are normalised to (0, 2π] so the same frequencies cover any grid size; each axis gets
    ``POS_HIDDEN_DIM`` features (sin/cos pairs at geometrically spaced wavelengths). Computed per call for the
    current H×W, which is what lets EdgeNeXt run at resolutions other than the training one.
    """

    def __init__(self, *, dim: int, hidden_dim: int = POS_HIDDEN_DIM, temperature: float = POS_TEMPERATURE) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (sin/cos pairs), got {hidden_dim!r}")
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.proj = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def _axis(self, length: int, device: torch.device) -> Tensor:
        """``(length, hidden_dim)`` features: [sin(p/λ0), cos(p/λ0), sin(p/λ1), cos(p/λ1), …] for p = 2π·i/length."""
        eps = 1e-6  # the reference divides by (length + eps)
        position = torch.arange(1, length + 1, device=device, dtype=torch.float32)
        position = position / (length + eps) * (2 * math.pi)
        pair_index = torch.div(torch.arange(self.hidden_dim, device=device), 2, rounding_mode="floor").float()
        wavelength = self.temperature ** (2 * pair_index / self.hidden_dim)
        angle = position[:, None] / wavelength  # (length, hidden_dim); columns 2j and 2j+1 share a wavelength
        return torch.stack((angle[:, 0::2].sin(), angle[:, 1::2].cos()), dim=-1).flatten(1)

    def forward(self, height: int, width: int) -> Tensor:
        """The encoding for an ``height × width`` grid, shape ``(1, dim, height, width)`` (broadcast over batch)."""
        device = self.proj.weight.device
        rows = self._axis(height, device)[:, None, :].expand(height, width, self.hidden_dim)
        cols = self._axis(width, device)[None, :, :].expand(height, width, self.hidden_dim)
        grid = torch.cat((rows, cols), dim=-1).permute(2, 0, 1).unsqueeze(0)  # (1, 2·hidden, H, W): y then x
        return self.proj(grid.to(self.proj.weight.dtype))

    def fixed_size_form(self, height: int, width: int) -> nn.Module:
        """Inference form for one grid size: the encoding computed once and kept as a buffer (phone exports
        have a fixed input size, and arange/sin/cos would otherwise run on every call)."""
        return _FixedPositionEncoding(self, height, width)


class _FixedPositionEncoding(nn.Module):
    """:class:`FourierPositionEncoding`'s output for one ``height × width``, precomputed; other sizes compute."""

    def __init__(self, source: FourierPositionEncoding, height: int, width: int) -> None:
        super().__init__()
        self.source = source
        self.size = (int(height), int(width))
        with torch.no_grad():
            self.register_buffer("table", source(height, width).detach().clone())

    def forward(self, height: int, width: int) -> Tensor:
        if (height, width) == self.size:
            return self.table
        return self.source(height, width)


class SDTAEncoder(nn.Module):
    """Split depth-wise transpose attention encoder (paper §3.2, Fig. 2 right).

    1. Split the channels into ``scales`` groups. Group 1 goes through a 3×3 depthwise conv; every further group but
       the last is added to the previous group's output before its own conv, so receptive fields grow group by
       group (multi-scale features at no extra cost). The last group passes through unchanged.
    2. Optionally add the Fourier position encoding, then XCA on the ``H·W`` tokens (pre-norm, layer scale).
    3. The channel MLP (pre-norm, layer scale); the outer residual spans steps 1–3.
    """

    def __init__(
        self,
        *,
        dim: int,
        scales: int,
        heads: int,
        pos_embed: bool,
        expand_ratio: float,
        layer_scale_init: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        width = math.ceil(dim / scales)
        last = dim - width * (scales - 1)
        if last <= 0:
            raise ValueError(f"cannot split dim={dim} into scales={scales} groups of {width} channels")
        self.split_sizes = [width] * (scales - 1) + [last]
        self.scale_convs = nn.ModuleList(
            nn.Conv2d(width, width, SCALE_CONV_KERNEL, padding=SCALE_CONV_KERNEL // 2, groups=width)
            for _ in range(scales - 1)
        )
        self.pos_embed = FourierPositionEncoding(dim=dim) if pos_embed else None
        self.xca_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.xca = CrossCovarianceAttention(dim, num_heads=heads, qkv_bias=True)
        self.xca_layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.channel_mlp = ChannelMlp(dim=dim, expand_ratio=expand_ratio, layer_scale_init=layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _multi_scale(self, x: Tensor) -> Tensor:
        groups = torch.split(x, self.split_sizes, dim=1)
        outputs: list[Tensor] = []
        carried: Tensor | None = None
        for group, conv in zip(groups, self.scale_convs):
            carried = conv(group if carried is None else carried + group)
            outputs.append(carried)
        outputs.append(groups[-1])
        return torch.cat(outputs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = self._multi_scale(x).flatten(2).transpose(1, 2)  # (B, H·W, C)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed(height, width).flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.xca_layer_scale * self.xca(self.xca_norm(tokens)))
        branch = self.channel_mlp(tokens.reshape(batch, height, width, channels)).permute(0, 3, 1, 2)
        return x + self.drop_path(branch)

    def deploy_form(self) -> nn.Module:
        """The inference form (see :class:`_SDTAEncoderNCHW`), used by :func:`edgezoo.deploy.fuse`."""
        return _SDTAEncoderNCHW(self)


class _SDTAEncoderNCHW(nn.Module):
    """Inference form of :class:`SDTAEncoder` that never leaves NCHW.

    XCA attends across channels with tokens as the feature axis, which is the NCHW layout already: the qkv
    projection becomes a 1×1 conv whose ``3·C`` output channels reshape to ``(3, heads, d, H·W)`` without a
    transpose, and the attended ``(heads, d, H·W)`` result reshapes straight back to ``(C, H, W)``. LayerNorm
    affines and both layer scales are folded into the 1×1 convs (see :class:`_ConvEncoderNCHW`).
    """

    def __init__(self, enc: SDTAEncoder) -> None:
        super().__init__()
        xca = enc.xca
        self.split_sizes = enc.split_sizes
        self.scale_convs = enc.scale_convs
        self.pos_embed = enc.pos_embed
        self.num_heads, self.head_dim = xca.num_heads, xca.head_dim
        self.norm = ChannelNorm2d(enc.xca_norm.eps)
        self.qkv = linear_as_conv1x1(xca.qkv, in_scale=enc.xca_norm.weight, in_shift=enc.xca_norm.bias)
        self.temperature = nn.Parameter(xca.temperature.detach().clone(), requires_grad=False)
        self.proj = linear_as_conv1x1(xca.proj, out_scale=enc.xca_layer_scale)
        self.mlp = _channel_mlp_nchw(enc.channel_mlp)

    _multi_scale = SDTAEncoder._multi_scale

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        y = self._multi_scale(x)
        if self.pos_embed is not None:
            y = y + self.pos_embed(height, width)
        qkv = self.qkv(self.norm(y)).reshape(batch, 3, self.num_heads, self.head_dim, height * width)
        attended = channel_attention(*qkv.unbind(1), self.temperature)  # q, k, v and result: (B, heads, d, N)
        y = y + self.proj(attended.reshape(batch, channels, height, width))
        return x + self.mlp(y)


class EdgeNeXtStage(nn.Module):
    """Optional 2× down-sampling, then the stage's conv encoders followed by its SDTA encoders."""

    def __init__(
        self,
        *,
        in_dim: int,
        spec: EdgeNeXtStageSpec,
        downsample: bool,
        drop_path_rates: Sequence[float],
        expand_ratio: float,
        layer_scale_init: float,
    ) -> None:
        super().__init__()
        if not downsample and in_dim != spec.dim:
            raise ValueError(f"a stage without down-sampling keeps its width: in_dim={in_dim} != dim={spec.dim}")
        self.downsample = Downsample(in_dim=in_dim, out_dim=spec.dim) if downsample else nn.Identity()
        num_conv = spec.depth - spec.sdta_blocks
        blocks: list[nn.Module] = []
        for i, rate in enumerate(drop_path_rates):
            common = dict(dim=spec.dim, expand_ratio=expand_ratio, layer_scale_init=layer_scale_init, drop_path=rate)
            if i < num_conv:
                blocks.append(ConvEncoder(kernel_size=spec.kernel_size, **common))
            else:
                blocks.append(SDTAEncoder(scales=spec.scales, heads=spec.heads, pos_embed=spec.pos_embed, **common))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class EdgeNeXtHead(nn.Module):
    """Global average pool → LayerNorm → dropout → linear classifier (the paper's head)."""

    def __init__(self, *, dim: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.drop = nn.Dropout(drop_rate)
        self.fc = classifier_or_identity(dim, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x.mean(dim=(2, 3)))
        if pre_logits:
            return x
        return self.fc(self.drop(x))


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------
class EdgeNeXt(EdgeModel):
    """EdgeNeXt classifier / backbone; features at strides 4, 8, 16, 32 (``stages.0`` … ``stages.3``)."""

    feature_trunk = "stages"

    def __init__(
        self,
        *,
        variant: EdgeNeXtVariant,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        default_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(variant, EdgeNeXtVariant):
            raise TypeError(f"variant must be an EdgeNeXtVariant, got {type(variant).__name__}")
        validate_num_classes(num_classes)
        check_drop_rate(drop_rate)
        self.variant = variant
        self.num_classes = num_classes
        dims = [s.dim for s in variant.stages]

        self.stem = Stem(in_chans=in_chans, dim=dims[0])
        rates = drop_path_rates(drop_path_rate, [s.depth for s in variant.stages])
        stages, feature_info = [], []
        in_dim, reduction = dims[0], STEM_STRIDE
        for i, spec in enumerate(variant.stages):
            downsample = i > 0  # the stem already brought stage 1 to stride 4
            if downsample:
                reduction *= DOWNSAMPLE_STRIDE
            stages.append(
                EdgeNeXtStage(
                    in_dim=in_dim,
                    spec=spec,
                    downsample=downsample,
                    drop_path_rates=rates[i],
                    expand_ratio=variant.expand_ratio,
                    layer_scale_init=variant.layer_scale_init,
                )
            )
            feature_info.append(feature_entry(spec.dim, reduction, f"stages.{i}"))
            in_dim = spec.dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self.num_features = dims[-1]
        self.head = EdgeNeXtHead(dim=self.num_features, num_classes=num_classes, drop_rate=float(drop_rate))
        self.default_cfg = dict(default_cfg) if default_cfg is not None else make_edgenext_cfg(variant)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (σ = 0.02) for convs and linears, zero biases, as in ConvNeXt/EdgeNeXt training."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def _check_input(x: Tensor, min_size: int) -> None:
        if x.ndim != 4 or x.shape[-2] < min_size or x.shape[-1] < min_size:
            raise ValueError(
                f"EdgeNeXt expects (N, C, H, W) input with H, W >= {min_size} for the requested stages, "
                f"got shape {tuple(x.shape)}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x, MIN_INPUT_SIZE)
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        validate_num_classes(num_classes)
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be None or 'avg' for EdgeNeXt, got {global_pool!r}")
        self.num_classes = num_classes
        if isinstance(self.head, EdgeNeXtHead):
            self.head.fc = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        info = getattr(self, "full_feature_info", self.feature_info)
        wanted = set(indices)
        if wanted:
            self._check_input(x, info[max(wanted)]["reduction"])
        return forward_stages(x, self.stages, wanted, stem=self.stem)

    def head_modules(self) -> list[str]:
        return ["head"]


# --------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------
DEFAULT_INPUT_SIZE = 256  # the paper trains and evaluates at 256×256
TEST_INPUT_SIZE = {"edgenext_xx_small": 288, "edgenext_x_small": 288, "edgenext_small": 320, "edgenext_base": 320}


def make_edgenext_cfg(variant: EdgeNeXtVariant, *, name: str | None = None, input_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """timm-compatible ``default_cfg`` for a variant (ImageNet mean/std, bicubic, 256×256)."""
    h, w = input_hw or (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    extra: dict[str, Any] = {}
    if name in TEST_INPUT_SIZE:
        extra = dict(test_input_size=(3, TEST_INPUT_SIZE[name], TEST_INPUT_SIZE[name]), test_crop_pct=1.0)
    return make_default_cfg(
        input_size=(3, h, w),
        crop_pct=variant.crop_pct,
        interpolation="bicubic",
        first_conv="stem.conv",
        classifier="head.fc",
        min_input_size=(3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        pool_size=(h // 32, w // 32),
        **extra,
    )


def _build(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
) -> EdgeNeXt:
    """Builder behind every registered EdgeNeXt name; ``drop_rate`` (head dropout) is the only family override.

    ``img_size`` only sets ``default_cfg['input_size']``: the network itself accepts any H, W >= 32.
    """
    variant = VARIANTS[name]
    input_hw = None
    if img_size is not None:
        input_hw = to_2tuple(img_size, name="img_size")
        if min(input_hw) < MIN_INPUT_SIZE:
            raise ValueError(f"img_size must be >= {MIN_INPUT_SIZE} for EdgeNeXt (stride 32), got {img_size!r}")
    cfg = make_edgenext_cfg(variant, name=name, input_hw=input_hw)
    return EdgeNeXt(
        variant=variant,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
        default_cfg=cfg,
    )


for _name, _variant in VARIANTS.items():
    register_model(
        _name,
        family="edgenext",
        builder=partial(_build, _name),
        default_cfg=make_edgenext_cfg(_variant, name=_name),
        imagenet_top1=_variant.imagenet_top1,
    )
del _name, _variant
