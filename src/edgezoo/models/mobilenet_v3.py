"""MobileNetV3 (Howard et al., 2019, "Searching for MobileNetV3", arXiv:1905.02244).

MobileNetV2's inverted residuals, searched per layer (kernel size, expansion, width), with three additions:
squeeze-and-excite in some blocks (reduce to 1/4 of the expanded width, ReLU, hard-sigmoid gate), the hard-swish
nonlinearity in the deeper half, and an "efficient last stage" (Sec. 5.3): pool first, then a 1×1 conv *without* BN
(with bias) to 1280 / 1024 channels and hard-swish, then the classifier — so the expensive head conv runs at 1×1.

The variant tables are the paper's Table 1 (Large) and Table 2 (Small), one :class:`Bneck` per row, grouped into
stages at the same places as timm (so feature levels and checkpoints line up). ``expansion`` is the row's
"exp size" divided by its input channels; with a width multiplier the expanded width is
``make_divisible(in_chs · expansion, 8)`` like the TF reference and timm compute it.

Module names: ``stem``, ``stages.<i>.<j>`` (:class:`~edgezoo.layers.InvertedResidual`; the last stage is the 1×1
``ConvNormAct`` to 960 / 576 channels), ``conv_head`` (1×1 conv with bias), ``classifier``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.activations import get_act
from ..layers.conv import ConvNormAct
from ..layers.drop import drop_path_rates
from ..layers.helpers import check_number, check_width_mult, make_divisible, to_2tuple
from ..layers.inverted_residual import InvertedResidual
from ..layers.squeeze_excite import SqueezeExcite
from ..registry import register_model
from ._base import (
    EdgeModel,
    check_avg_pool,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
    width_mult_builder,
)

FAMILY = "mobilenetv3"
CHANNEL_DIVISOR = 8
# SE bottleneck width relative to the expanded width (Sec. 5.3: "fixed to be 1/4 of the number of channels in
# expansion layer").
SE_RATIO = 0.25
RE, HS = "relu", "hard_swish"


@dataclass(frozen=True)
class Bneck:
    """One "bneck" row of Tables 1–2: kernel, expansion (exp size ÷ #in), #out, SE, nonlinearity (NL), stride."""

    kernel_size: int
    expansion: float
    out_chs: int
    se: bool
    act: str
    stride: int


@dataclass(frozen=True)
class MobileNetV3Config:
    """A MobileNetV3 variant: width multiplier α and the α = 1 network of the paper's table."""

    width_mult: float
    stages: tuple[tuple[Bneck, ...], ...]
    last_conv_chs: int  # the 1×1 conv (with BN) before pooling; scaled by α
    head_chs: int  # the 1×1 "NBN" conv after pooling; never scaled
    stem_chs: int = 16  # conv2d 3×3, stride 2, hard-swish
    act: str = HS  # stem, last conv and head nonlinearity
    # timm keeps the 16-channel stem for α below this (narrower stems save almost nothing); needed to load its weights.
    min_width_to_scale_stem: float = 0.75


LARGE_STAGES: tuple[tuple[Bneck, ...], ...] = (
    (  # 112×112 in (exp 16)
        Bneck(kernel_size=3, expansion=1, out_chs=16, se=False, act=RE, stride=1),
    ),
    (  # 112×112 in (exp 64, 72)
        Bneck(kernel_size=3, expansion=4, out_chs=24, se=False, act=RE, stride=2),
        Bneck(kernel_size=3, expansion=3, out_chs=24, se=False, act=RE, stride=1),
    ),
    (  # 56×56 in (exp 72, 120, 120)
        Bneck(kernel_size=5, expansion=3, out_chs=40, se=True, act=RE, stride=2),
        Bneck(kernel_size=5, expansion=3, out_chs=40, se=True, act=RE, stride=1),
        Bneck(kernel_size=5, expansion=3, out_chs=40, se=True, act=RE, stride=1),
    ),
    (  # 28×28 in (exp 240, 200, 184, 184)
        Bneck(kernel_size=3, expansion=6, out_chs=80, se=False, act=HS, stride=2),
        Bneck(kernel_size=3, expansion=2.5, out_chs=80, se=False, act=HS, stride=1),
        Bneck(kernel_size=3, expansion=2.3, out_chs=80, se=False, act=HS, stride=1),
        Bneck(kernel_size=3, expansion=2.3, out_chs=80, se=False, act=HS, stride=1),
    ),
    (  # 14×14 in (exp 480, 672)
        Bneck(kernel_size=3, expansion=6, out_chs=112, se=True, act=HS, stride=1),
        Bneck(kernel_size=3, expansion=6, out_chs=112, se=True, act=HS, stride=1),
    ),
    (  # 14×14 in (exp 672, 960, 960)
        Bneck(kernel_size=5, expansion=6, out_chs=160, se=True, act=HS, stride=2),
        Bneck(kernel_size=5, expansion=6, out_chs=160, se=True, act=HS, stride=1),
        Bneck(kernel_size=5, expansion=6, out_chs=160, se=True, act=HS, stride=1),
    ),
    # 7×7 in: conv2d 1×1 to 960 (last_conv_chs), pool, conv2d 1×1 NBN to 1280 (head_chs), classifier
)

SMALL_STAGES: tuple[tuple[Bneck, ...], ...] = (
    (  # 112×112 in (exp 16)
        Bneck(kernel_size=3, expansion=1, out_chs=16, se=True, act=RE, stride=2),
    ),
    (  # 56×56 in (exp 72, 88); 3.67 ≈ 88/24 is the ratio the reference implementations use
        Bneck(kernel_size=3, expansion=4.5, out_chs=24, se=False, act=RE, stride=2),
        Bneck(kernel_size=3, expansion=3.67, out_chs=24, se=False, act=RE, stride=1),
    ),
    (  # 28×28 in (exp 96, 240, 240)
        Bneck(kernel_size=5, expansion=4, out_chs=40, se=True, act=HS, stride=2),
        Bneck(kernel_size=5, expansion=6, out_chs=40, se=True, act=HS, stride=1),
        Bneck(kernel_size=5, expansion=6, out_chs=40, se=True, act=HS, stride=1),
    ),
    (  # 14×14 in (exp 120, 144)
        Bneck(kernel_size=5, expansion=3, out_chs=48, se=True, act=HS, stride=1),
        Bneck(kernel_size=5, expansion=3, out_chs=48, se=True, act=HS, stride=1),
    ),
    (  # 14×14 in (exp 288, 576, 576)
        Bneck(kernel_size=5, expansion=6, out_chs=96, se=True, act=HS, stride=2),
        Bneck(kernel_size=5, expansion=6, out_chs=96, se=True, act=HS, stride=1),
        Bneck(kernel_size=5, expansion=6, out_chs=96, se=True, act=HS, stride=1),
    ),
    # 7×7 in: conv2d 1×1 to 576 (last_conv_chs; Table 2 marks SE here, but no reference implementation has it),
    # pool, conv2d 1×1 NBN to 1024 (head_chs), classifier
)

_LARGE = MobileNetV3Config(width_mult=1.0, stages=LARGE_STAGES, last_conv_chs=960, head_chs=1280)
_SMALL = MobileNetV3Config(width_mult=1.0, stages=SMALL_STAGES, last_conv_chs=576, head_chs=1024)

VARIANTS: dict[str, MobileNetV3Config] = {
    "mobilenetv3_small_050": replace(_SMALL, width_mult=0.50),
    "mobilenetv3_small_075": replace(_SMALL, width_mult=0.75),
    "mobilenetv3_small_100": _SMALL,
    "mobilenetv3_large_075": replace(_LARGE, width_mult=0.75),
    "mobilenetv3_large_100": _LARGE,
}

# ImageNet top-1 reported in the paper (Table 3); small 0.5 is not in it.
PAPER_TOP1: dict[str, float | None] = {
    "mobilenetv3_small_050": None,
    "mobilenetv3_small_075": 65.4,
    "mobilenetv3_small_100": 67.4,
    "mobilenetv3_large_075": 73.3,
    "mobilenetv3_large_100": 75.2,
}


def _squeeze_excite(chs: int) -> nn.Module:
    """MobileNetV3's SE: reduce to ``make_divisible(chs / 4)``, ReLU, expand, hard-sigmoid gate."""
    return SqueezeExcite(chs, make_divisible(chs * SE_RATIO, CHANNEL_DIVISOR), act="relu", gate="hard_sigmoid")


class MobileNetV3(EdgeModel):
    """MobileNetV3 (Large or Small) classifier / backbone built from a :class:`MobileNetV3Config`.

    ``num_features`` is the width of the pooled head output (1280 / 1024, what ``forward_head(pre_logits=True)``
    and ``num_classes=0`` return); the last feature map (``forward_features``) has ``feature_info[-1]["num_chs"]``
    channels (960 / 576 at α = 1).
    """

    def __init__(
        self,
        config: MobileNetV3Config,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        bn_eps: float = 1e-5,
        default_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        alpha = check_width_mult(config.width_mult)
        drop_rate = check_number("drop_rate", drop_rate, low=0.0, high=1.0)
        bn_eps = check_number("bn_eps", bn_eps, low=0.0, open_low=True)
        self.config = config
        self.num_classes = num_classes

        def width(chs: int) -> int:
            return make_divisible(chs * alpha, CHANNEL_DIVISOR)

        stem_chs = width(config.stem_chs) if alpha >= config.min_width_to_scale_stem else config.stem_chs
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, act=config.act, bn_eps=bn_eps)

        # feature level -> where it is taken: -1 = stem output, i = output of stage i
        points: list[int] = []
        feature_info = []
        reduction = 2
        if config.stages[0][0].stride > 1:  # the first stage downsamples: the stem output is its own level
            points.append(-1)
            feature_info.append(feature_entry(stem_chs, reduction, "stem"))

        # timm's EfficientNet schedule (rate · i / total), which its MobileNetV3 weights were trained with
        dpr = drop_path_rates(drop_path_rate, [len(s) for s in config.stages], schedule="block_index")
        stages: list[nn.Module] = []
        in_chs = stem_chs
        for idx, rows in enumerate(config.stages):
            blocks = []
            for j, row in enumerate(rows):
                out_chs = width(row.out_chs)
                expand = row.expansion != 1
                blocks.append(
                    InvertedResidual(
                        in_chs,
                        out_chs,
                        mid_chs=make_divisible(in_chs * row.expansion, CHANNEL_DIVISOR) if expand else in_chs,
                        kernel_size=row.kernel_size,
                        stride=row.stride,
                        act=row.act,
                        expand=expand,
                        se=_squeeze_excite if row.se else None,
                        drop_path=dpr[idx][j],
                        bn_eps=bn_eps,
                    )
                )
                reduction *= row.stride
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            next_strided = idx + 1 < len(config.stages) and config.stages[idx + 1][0].stride > 1
            if next_strided:
                points.append(idx)
                feature_info.append(feature_entry(in_chs, reduction, f"stages.{idx}"))

        # The final 1×1 conv (with BN) is a stage of its own, the deepest feature level.
        last_chs = width(config.last_conv_chs)
        stages.append(nn.Sequential(ConvNormAct(in_chs, last_chs, 1, act=config.act, bn_eps=bn_eps)))
        points.append(len(stages) - 1)
        feature_info.append(feature_entry(last_chs, reduction, f"stages.{len(stages) - 1}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self._feature_points = points

        # Efficient last stage: pool, then a 1×1 conv with bias (no BN: it runs on a 1×1 map) and hard-swish.
        self.num_features = self.head_hidden_size = config.head_chs
        self.conv_head = nn.Conv2d(last_chs, config.head_chs, 1, bias=True)
        self.head_act = get_act(config.act)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = classifier_or_identity(self.num_features, num_classes)
        self.default_cfg = default_cfg or make_default_cfg(first_conv="stem.conv", classifier="classifier")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_act(self.conv_head(x.mean((2, 3), keepdim=True)))
        x = torch.flatten(x, 1)
        if pre_logits:
            return x
        return self.classifier(self.head_drop(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = validate_num_classes(num_classes)
        check_avg_pool(global_pool, why="the only pooling MobileNetV3 uses")
        self.classifier = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        wanted = {self._feature_points[i] for i in indices}
        return forward_stages(x, self.stages, wanted, stem=self.stem)

    def head_modules(self) -> list[str]:
        return ["conv_head", "head_act", "head_drop", "classifier"]


def _default_cfg(img_size: int | tuple[int, int] | None) -> dict[str, Any]:
    h, w = to_2tuple(img_size if img_size is not None else 224, name="img_size")
    return make_default_cfg(input_size=(3, h, w), first_conv="stem.conv", classifier="classifier")


_BUILD_DOC = """Build ``{name}``; ``width_mult`` replaces the variant's α.

``bn_eps`` sets the BatchNorm epsilon: 1e-5 for timm's weights (the default), 1e-3 for torchvision's, e.g.
``create_model("mobilenetv3_large_100", bn_eps=1e-3, checkpoint="mobilenet_v3_large.pth")``.
"""


for _name in VARIANTS:
    register_model(
        _name,
        family=FAMILY,
        builder=width_mult_builder(
            _name, model_cls=MobileNetV3, config=VARIANTS[_name], default_cfg=_default_cfg, doc=_BUILD_DOC
        ),
        default_cfg=_default_cfg(None),
        imagenet_top1=PAPER_TOP1[_name],
    )
