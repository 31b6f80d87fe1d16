"""MobileNetV4 — Universal Models for the Mobile Ecosystem (Qin et al., 2024, arXiv:2404.10518).

MobileNetV4 is a NAS-searched family built from two new pieces (both in :mod:`edgezoo.layers`):

* the **Universal Inverted Bottleneck** (UIB): an inverted bottleneck with an optional depthwise conv before the
  expansion and an optional one after it, giving the IB / ConvNext / ExtraDW / FFN forms the search mixes per layer;
* **Mobile MQA**: multi-query attention with one shared K/V head whose map is shrunk by a stride-2 depthwise
  conv in the 16× stage, used by the hybrid models in their last two stages.

The first stage after the stem is a fused IB (a k×k full conv expanding, then a 1×1 projection), or plain convs in
Conv-S. The head pools first and then runs a 1×1 conv 960→1280 with BN and activation (the MobileNetV3 "efficient
head" plus a norm), then the classifier.

Variants are data: a frozen dataclass per block kind, one tuple per stage, written like the paper's
architecture tables (spatial sizes in the comments are those at each model's default input). Block kinds mirror the paper's names:
``Conv``, ``FusedIB``, ``ExtraDW`` / ``IB`` / ``ConvNext`` / ``FFN`` (all UIB) and ``MQA``.

Parameter names, feature levels and default configs match timm's ``mobilenetv4_*`` models (converter in
:mod:`edgezoo.convert.mobilenetv4`). Layer scale (init 1e-5) is on in the hybrid models only, as in the reference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor, nn

from ..layers.conv import ConvNormAct
from ..layers.drop import drop_path_rates
from ..layers.helpers import check_drop_rate
from ..layers.mobile_mqa import MobileMQABlock
from ..layers.uib import FusedInvertedBottleneck, UniversalInvertedBottleneck
from ..registry import register_model
from ._base import (
    EdgeModel,
    check_avg_pool,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
)

FAMILY = "mobilenetv4"


# --- block specs (one frozen dataclass per block kind) ------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ConvSpec:
    """A plain k×k conv → BN → act, no residual (Conv-S's early layers and the final 1×1 conv to 960)."""

    out_chs: int
    kernel_size: int
    stride: int = 1
    repeats: int = 1


@dataclass(frozen=True, kw_only=True)
class FusedIBSpec:
    """Fused inverted bottleneck: k×k full conv to ``in_chs · expand_ratio``, then a 1×1 linear projection."""

    out_chs: int
    kernel_size: int
    expand_ratio: float
    stride: int = 1
    repeats: int = 1


@dataclass(frozen=True, kw_only=True)
class UIBSpec:
    """Universal inverted bottleneck; ``None`` kernels mean the optional depthwise conv is absent.

    Build it through the paper's names :func:`ExtraDW`, :func:`IB`, :func:`ConvNext`, :func:`FFN`.
    """

    out_chs: int
    start_dw_kernel: int | None
    mid_dw_kernel: int | None
    expand_ratio: float
    stride: int = 1
    repeats: int = 1

    @property
    def form(self) -> str:
        """The paper's name for this UIB instantiation."""
        names = {(True, True): "ExtraDW", (False, True): "IB", (True, False): "ConvNext", (False, False): "FFN"}
        return names[(self.start_dw_kernel is not None, self.mid_dw_kernel is not None)]


@dataclass(frozen=True, kw_only=True)
class MQASpec:
    """Mobile MQA block: ``num_heads`` query heads of width ``head_dim`` sharing one K and one V head.

    ``kv_stride=2`` shrinks K/V with a stride-2 ``kv_kernel``×``kv_kernel`` depthwise conv (used at 16× stride).
    """

    out_chs: int
    num_heads: int
    head_dim: int
    kv_stride: int = 1
    kv_kernel: int = 3
    repeats: int = 1

    @property
    def stride(self) -> int:
        """Attention blocks keep the resolution."""
        return 1


BlockSpec = Union[ConvSpec, FusedIBSpec, UIBSpec, MQASpec]


def ExtraDW(  # noqa: N802  (the paper's block name)
    *, out_chs: int, start_dw_kernel: int, mid_dw_kernel: int, expand_ratio: float, stride: int = 1, repeats: int = 1
) -> UIBSpec:
    """UIB with both depthwise convs: extra depth and receptive field for little cost."""
    return UIBSpec(out_chs=out_chs, start_dw_kernel=start_dw_kernel, mid_dw_kernel=mid_dw_kernel,
                   expand_ratio=expand_ratio, stride=stride, repeats=repeats)


def IB(  # noqa: N802
    *, out_chs: int, mid_dw_kernel: int, expand_ratio: float, stride: int = 1, repeats: int = 1
) -> UIBSpec:
    """UIB as the MobileNetV2 inverted bottleneck (depthwise conv on the expanded features only)."""
    return UIBSpec(out_chs=out_chs, start_dw_kernel=None, mid_dw_kernel=mid_dw_kernel,
                   expand_ratio=expand_ratio, stride=stride, repeats=repeats)


def ConvNext(  # noqa: N802
    *, out_chs: int, start_dw_kernel: int, expand_ratio: float, stride: int = 1, repeats: int = 1
) -> UIBSpec:
    """UIB as a ConvNeXt-like block (depthwise conv before the expansion only)."""
    return UIBSpec(out_chs=out_chs, start_dw_kernel=start_dw_kernel, mid_dw_kernel=None,
                   expand_ratio=expand_ratio, stride=stride, repeats=repeats)


def FFN(*, out_chs: int, expand_ratio: float, repeats: int = 1) -> UIBSpec:  # noqa: N802
    """UIB with no depthwise conv: a pointwise feed-forward network (stride 1 only)."""
    return UIBSpec(out_chs=out_chs, start_dw_kernel=None, mid_dw_kernel=None,
                   expand_ratio=expand_ratio, stride=1, repeats=repeats)


@dataclass(frozen=True, kw_only=True)
class MobileNetV4Config:
    """One MobileNetV4 variant: stem width, stages of block specs, activation and layer-scale init."""

    stem_chs: int
    stages: tuple[tuple[BlockSpec, ...], ...]
    act: str = "relu"
    layer_scale_init: float | None = None  # hybrid models: 1e-5 on every UIB and MQA branch
    head_chs: int = 1280


# --- the variant table ------------------------------------------------------------------------------------------
# The last stage of every variant is the 1×1 conv to 960 channels that precedes the pooled head.
_TO_960 = (ConvSpec(out_chs=960, kernel_size=1),)

CONV_SMALL = MobileNetV4Config(  # MNv4-Conv-S, default input 224
    stem_chs=32,
    stages=(
        (  # 112×112 in
            ConvSpec(out_chs=32, kernel_size=3, stride=2),
            ConvSpec(out_chs=32, kernel_size=1),
        ),
        (  # 56×56 in
            ConvSpec(out_chs=96, kernel_size=3, stride=2),
            ConvSpec(out_chs=64, kernel_size=1),
        ),
        (  # 28×28 in
            ExtraDW(out_chs=96, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=3.0, stride=2),
            IB(out_chs=96, mid_dw_kernel=3, expand_ratio=2.0, repeats=4),
            ConvNext(out_chs=96, start_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 14×14 in
            ExtraDW(out_chs=128, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=6.0, stride=2),
            ExtraDW(out_chs=128, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            IB(out_chs=128, mid_dw_kernel=5, expand_ratio=4.0),
            IB(out_chs=128, mid_dw_kernel=5, expand_ratio=3.0),
            IB(out_chs=128, mid_dw_kernel=3, expand_ratio=4.0, repeats=2),
        ),
        _TO_960,  # 7×7 in
    ),
)

CONV_MEDIUM = MobileNetV4Config(  # MNv4-Conv-M, default input 256
    stem_chs=32,
    stages=(
        (  # 128×128 in
            FusedIBSpec(out_chs=48, kernel_size=3, expand_ratio=4.0, stride=2),
        ),
        (  # 64×64 in
            ExtraDW(out_chs=80, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=80, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=2.0),
        ),
        (  # 32×32 in
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=6.0, stride=2),
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0, repeats=2),
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
            ConvNext(out_chs=160, start_dw_kernel=3, expand_ratio=4.0),
            FFN(out_chs=160, expand_ratio=2.0),
            ConvNext(out_chs=160, start_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 16×16 in
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=6.0, stride=2),
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=256, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, repeats=2),
            FFN(out_chs=256, expand_ratio=4.0),
            ConvNext(out_chs=256, start_dw_kernel=3, expand_ratio=4.0),
            ExtraDW(out_chs=256, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=2.0),
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            FFN(out_chs=256, expand_ratio=4.0, repeats=2),
            ConvNext(out_chs=256, start_dw_kernel=5, expand_ratio=2.0),
        ),
        _TO_960,  # 8×8 in
    ),
)

CONV_LARGE = MobileNetV4Config(  # MNv4-Conv-L, default input 384
    stem_chs=24,
    stages=(
        (  # 192×192 in
            FusedIBSpec(out_chs=48, kernel_size=3, expand_ratio=4.0, stride=2),
        ),
        (  # 96×96 in
            ExtraDW(out_chs=96, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=96, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 48×48 in
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0, repeats=3),
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=192, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0, repeats=5),
            ConvNext(out_chs=192, start_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 24×24 in
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0, stride=2, repeats=4),
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0, repeats=2),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0, repeats=3),
        ),
        _TO_960,  # 12×12 in
    ),
)

# Hybrid models: the 16× stage's MQA blocks down-sample K/V (stride 2), the 32× stage's do not.
_MQA_M16 = MQASpec(out_chs=160, num_heads=4, head_dim=64, kv_stride=2)
_MQA_M32 = MQASpec(out_chs=256, num_heads=4, head_dim=64)

HYBRID_MEDIUM = MobileNetV4Config(  # MNv4-Hybrid-M, default input 256
    stem_chs=32,
    layer_scale_init=1e-5,
    stages=(
        (  # 128×128 in
            FusedIBSpec(out_chs=48, kernel_size=3, expand_ratio=4.0, stride=2),
        ),
        (  # 64×64 in
            ExtraDW(out_chs=80, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=80, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=2.0),
        ),
        (  # 32×32 in
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=6.0, stride=2),
            FFN(out_chs=160, expand_ratio=2.0),
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0),
            _MQA_M16,
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
            _MQA_M16,
            ConvNext(out_chs=160, start_dw_kernel=3, expand_ratio=4.0),
            _MQA_M16,
            ExtraDW(out_chs=160, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
            _MQA_M16,
            ConvNext(out_chs=160, start_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 16×16 in
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=6.0, stride=2),
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=256, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, repeats=2),
            FFN(out_chs=256, expand_ratio=2.0),
            ExtraDW(out_chs=256, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=2.0),
            FFN(out_chs=256, expand_ratio=2.0),
            FFN(out_chs=256, expand_ratio=4.0),
            _MQA_M32,
            ConvNext(out_chs=256, start_dw_kernel=3, expand_ratio=4.0),
            _MQA_M32,
            ExtraDW(out_chs=256, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            _MQA_M32,
            ConvNext(out_chs=256, start_dw_kernel=5, expand_ratio=4.0),
            _MQA_M32,
            ConvNext(out_chs=256, start_dw_kernel=5, expand_ratio=4.0),
        ),
        _TO_960,  # 8×8 in
    ),
)

_MQA_L16 = MQASpec(out_chs=192, num_heads=8, head_dim=48, kv_stride=2)
_MQA_L32 = MQASpec(out_chs=512, num_heads=8, head_dim=64)

HYBRID_LARGE = MobileNetV4Config(  # MNv4-Hybrid-L, default input 384; GELU throughout
    stem_chs=24,
    act="gelu",
    layer_scale_init=1e-5,
    stages=(
        (  # 192×192 in
            FusedIBSpec(out_chs=48, kernel_size=3, expand_ratio=4.0, stride=2),
        ),
        (  # 96×96 in
            ExtraDW(out_chs=96, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=96, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 48×48 in
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0, stride=2),
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=3, expand_ratio=4.0, repeats=3),
            ExtraDW(out_chs=192, start_dw_kernel=3, mid_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=192, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0, repeats=2),
            _MQA_L16,
            ExtraDW(out_chs=192, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            _MQA_L16,
            ExtraDW(out_chs=192, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            _MQA_L16,
            ExtraDW(out_chs=192, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            _MQA_L16,
            ConvNext(out_chs=192, start_dw_kernel=3, expand_ratio=4.0),
        ),
        (  # 24×24 in
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0, stride=2, repeats=4),
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0, repeats=2),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=3, expand_ratio=4.0),
            ExtraDW(out_chs=512, start_dw_kernel=5, mid_dw_kernel=5, expand_ratio=4.0),
            _MQA_L32,
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
            _MQA_L32,
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
            _MQA_L32,
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
            _MQA_L32,
            ConvNext(out_chs=512, start_dw_kernel=5, expand_ratio=4.0),
        ),
        _TO_960,  # 12×12 in
    ),
)


# --- the model --------------------------------------------------------------------------------------------------
def build_block(
    spec: BlockSpec,
    in_chs: int,
    *,
    stride: int | None = None,
    act: str = "relu",
    layer_scale_init: float | None = None,
    drop_path: float = 0.0,
) -> nn.Module:
    """One block of a variant table as a module: the same code path :class:`MobileNetV4` builds its blocks with.

    Public so that tools pricing or searching over blocks (``edgezoo.search``'s latency table, which times each
    block alone) build exactly the module the model would contain, not a look-alike. ``spec`` is one
    :data:`BlockSpec` (``repeats`` is ignored: this builds one block); ``in_chs`` its input channels; ``stride``
    the stride this copy runs at (default ``spec.stride``; a repeated block runs its later copies at 1);
    ``act`` the model's activation; ``layer_scale_init`` the hybrid models' layer scale (UIB and MQA only, None:
    off); ``drop_path`` the stochastic-depth rate of this block.
    """
    if isinstance(in_chs, bool) or not isinstance(in_chs, int) or in_chs < 1:
        raise ValueError(f"in_chs must be a positive int, got {in_chs!r}")
    stride = getattr(spec, "stride", 1) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if isinstance(spec, ConvSpec):
        return ConvNormAct(in_chs, spec.out_chs, spec.kernel_size, stride=stride, act=act)
    if isinstance(spec, FusedIBSpec):
        return FusedInvertedBottleneck(
            in_chs, spec.out_chs, kernel_size=spec.kernel_size, expand_ratio=spec.expand_ratio, stride=stride,
            act=act, drop_path=drop_path,
        )
    if isinstance(spec, UIBSpec):
        return UniversalInvertedBottleneck(
            in_chs, spec.out_chs, start_dw_kernel=spec.start_dw_kernel, mid_dw_kernel=spec.mid_dw_kernel,
            expand_ratio=spec.expand_ratio, stride=stride, act=act, layer_scale_init=layer_scale_init,
            drop_path=drop_path,
        )
    if isinstance(spec, MQASpec):
        return MobileMQABlock(
            in_chs, spec.out_chs, num_heads=spec.num_heads, key_dim=spec.head_dim, value_dim=spec.head_dim,
            kv_stride=spec.kv_stride, kv_kernel=spec.kv_kernel, layer_scale_init=layer_scale_init,
            drop_path=drop_path,
        )
    raise TypeError(f"unknown block spec {spec!r}; expected one of ConvSpec, FusedIBSpec, UIBSpec, MQASpec")


class MobileNetV4(EdgeModel):
    """MobileNetV4 classifier / backbone built from a :class:`MobileNetV4Config`.

    Layout (module names are part of the checkpoint format): ``conv_stem`` (3×3/2 conv-BN-act), ``blocks`` (one
    ``Sequential`` per stage), then the pooled head ``global_pool`` → ``conv_head`` (1×1 conv-BN-act to
    ``head_chs``) → ``classifier``. Feature levels are the stem output (stride 2) and the output of every stage
    that is followed by a down-sampling stage, plus the last one (stride 32, 960 channels).
    """

    def __init__(
        self,
        *,
        config: MobileNetV4Config,
        default_cfg: dict[str, Any],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        validate_num_classes(num_classes)
        check_drop_rate(drop_rate)
        self.config = config
        self.default_cfg = dict(default_cfg)
        self.num_classes = num_classes
        act = config.act

        self.conv_stem = ConvNormAct(in_chans, config.stem_chs, 3, stride=2, act=act)
        reduction = 2
        feature_info = []
        self._level_stages: list[int] = []  # stage index after which each feature level is taken (-1: the stem)
        stage_strides = [stage[0].stride for stage in config.stages]  # a stage down-samples in its first block
        if stage_strides and stage_strides[0] > 1:
            feature_info.append(feature_entry(config.stem_chs, reduction, "conv_stem"))
            self._level_stages.append(-1)

        # stochastic depth grows linearly with the block index over the whole network (0 for the first block)
        dpr = drop_path_rates(
            drop_path_rate, [sum(spec.repeats for spec in stage) for stage in config.stages], schedule="block_index"
        )
        chs = config.stem_chs
        stages: list[nn.Module] = []
        for stage_idx, stage in enumerate(config.stages):
            blocks: list[nn.Module] = []
            for spec in stage:
                for repeat in range(spec.repeats):
                    stride = spec.stride if repeat == 0 else 1
                    blocks.append(
                        build_block(
                            spec, chs, stride=stride, act=act, layer_scale_init=config.layer_scale_init,
                            drop_path=dpr[stage_idx][len(blocks)],
                        )
                    )
                    reduction *= stride
                    chs = spec.out_chs
            stages.append(nn.Sequential(*blocks))
            is_last = stage_idx == len(config.stages) - 1
            if is_last or stage_strides[stage_idx + 1] > 1:
                feature_info.append(feature_entry(chs, reduction, f"blocks.{stage_idx}"))
                self._level_stages.append(stage_idx)
        self.blocks = nn.Sequential(*stages)
        self.feature_info = feature_info

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = ConvNormAct(chs, config.head_chs, 1, act=act)
        self.flatten = nn.Flatten(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.num_features = config.head_chs  # width of forward_head(pre_logits=True)
        self.head_hidden_size = config.head_chs
        self.classifier = classifier_or_identity(config.head_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """TF-reference init of the MobileNet family: He-normal on fan-out (per group), BN at identity, zero biases.

        Layer scales keep their small constant init (set by the blocks).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.weight.shape[0])
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    # --- EdgeModel contract ----------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.conv_stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.conv_head(self.global_pool(x)))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_avg_pool(global_pool, why="the head conv is sized for average pooling")
        self.num_classes = validate_num_classes(num_classes)
        self.classifier = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        levels = getattr(self, "full_feature_info", self.feature_info)
        wanted = sorted(set(indices))
        for i in wanted:
            if not 0 <= i < len(levels):
                raise ValueError(f"indices entries must be in [0, {len(levels) - 1}], got {i!r}")
        stages_wanted = {self._level_stages[i] for i in wanted}
        return forward_stages(x, self.blocks, stages_wanted, stem=self.conv_stem)

    def head_modules(self) -> list[str]:
        return ["conv_head", "classifier"]


# --- registrations ----------------------------------------------------------------------------------------------
def _default_cfg(size: int, *, crop_pct: float, test_size: int, test_crop_pct: float) -> dict[str, Any]:
    return make_default_cfg(
        input_size=(3, size, size),
        crop_pct=crop_pct,
        interpolation="bicubic",
        first_conv="conv_stem.conv",
        classifier="classifier",
        pool_size=(size // 32, size // 32),
        test_input_size=(3, test_size, test_size),
        test_crop_pct=test_crop_pct,
        num_classes=1000,
    )


def _register(name: str, config: MobileNetV4Config, cfg: dict[str, Any], top1: float | None) -> None:
    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
    ) -> MobileNetV4:
        """Build ``name``. Convolutions and Mobile MQA run at any input ≥ 32 px; ``img_size`` only updates
        ``default_cfg['input_size']``. ``drop_rate`` is dropout before the classifier."""
        model_cfg = dict(cfg)
        if img_size is not None:
            height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            model_cfg["input_size"] = (in_chans, height, width)
        elif in_chans != 3:
            model_cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
        return MobileNetV4(
            config=config, default_cfg=model_cfg, num_classes=num_classes, in_chans=in_chans,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        )

    build.__name__ = name
    register_model(name, family=FAMILY, builder=build, default_cfg=cfg, imagenet_top1=top1)


# Default configs are those of timm's default pretrained tag of each name; top-1 only where the reference weights'
# accuracy at the default input size is known to us (timm model card: conv_large.e600_r384_in1k @384 = 82.952).
_register("mobilenetv4_conv_small", CONV_SMALL, _default_cfg(224, crop_pct=0.875, test_size=256, test_crop_pct=0.95), None)
_register("mobilenetv4_conv_medium", CONV_MEDIUM, _default_cfg(256, crop_pct=0.95, test_size=320, test_crop_pct=1.0), None)
_register("mobilenetv4_conv_large", CONV_LARGE, _default_cfg(384, crop_pct=0.95, test_size=448, test_crop_pct=1.0), 82.952)
_register("mobilenetv4_hybrid_medium", HYBRID_MEDIUM, _default_cfg(256, crop_pct=0.95, test_size=320, test_crop_pct=1.0), None)
_register("mobilenetv4_hybrid_large", HYBRID_LARGE, _default_cfg(384, crop_pct=0.95, test_size=448, test_crop_pct=1.0), None)

__all__ = [
    "CONV_LARGE",
    "CONV_MEDIUM",
    "CONV_SMALL",
    "HYBRID_LARGE",
    "HYBRID_MEDIUM",
    "ConvNext",
    "ConvSpec",
    "ExtraDW",
    "FFN",
    "FusedIBSpec",
    "IB",
    "MQASpec",
    "MobileNetV4",
    "MobileNetV4Config",
    "UIBSpec",
    "build_block",
]
