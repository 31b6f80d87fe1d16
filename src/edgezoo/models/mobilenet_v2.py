"""MobileNetV2 (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381).

A 3×3 stem, seven stages of inverted-residual bottlenecks (1×1 expand → 3×3 depthwise → 1×1 *linear* projection,
residual between narrow ends), a 1×1 conv to 1280 channels, global pooling and a linear classifier. The variant
table is the paper's Table 2 row for row (t, c, n, s).

Width multiplier: every layer's channels are ``make_divisible(c · α, 8)`` (the TF reference's rounding, also
timm's); the final 1×1 conv is never narrowed below 1280 (paper, Sec. 6.1: "for multipliers less than one, we apply
width multiplier to all layers except the very last convolutional layer"). The stem is scaled like the rest, which is
what timm's ``mobilenetv2_035/050/075`` do. The input may be any H×W.

Module names: ``stem``, ``stages.<i>.<j>`` (:class:`~edgezoo.layers.InvertedResidual`), ``conv_head``,
``classifier``. A bottleneck with expansion 1 (the first one) has no expansion conv, as in the paper.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.conv import ConvNormAct
from ..layers.drop import drop_path_rates
from ..layers.helpers import check_number, check_width_mult, make_divisible, to_2tuple
from ..layers.inverted_residual import InvertedResidual
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

FAMILY = "mobilenetv2"
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class BottleneckStage:
    """One row of Table 2: ``repeats`` (n) bottlenecks with expansion ``expansion`` (t) and ``out_chs`` (c).

    Only the first block of the stage uses ``stride`` (s); ``out_chs`` is the width at α = 1.
    """

    expansion: int
    out_chs: int
    repeats: int
    stride: int
    kernel_size: int = 3


@dataclass(frozen=True)
class MobileNetV2Config:
    """One MobileNetV2 variant: the width multiplier α plus the α = 1 network of Table 2."""

    width_mult: float
    stem_chs: int = 32  # 224×224 in, stride 2
    stages: tuple[BottleneckStage, ...] = (
        BottleneckStage(expansion=1, out_chs=16, repeats=1, stride=1),  # 112×112 in
        BottleneckStage(expansion=6, out_chs=24, repeats=2, stride=2),  # 112×112 in
        BottleneckStage(expansion=6, out_chs=32, repeats=3, stride=2),  # 56×56 in
        BottleneckStage(expansion=6, out_chs=64, repeats=4, stride=2),  # 28×28 in
        BottleneckStage(expansion=6, out_chs=96, repeats=3, stride=1),  # 14×14 in
        BottleneckStage(expansion=6, out_chs=160, repeats=3, stride=2),  # 14×14 in
        BottleneckStage(expansion=6, out_chs=320, repeats=1, stride=1),  # 7×7 in
    )
    head_chs: int = 1280  # 7×7 in: conv2d 1×1, then avgpool 7×7 and the classifier
    act: str = "relu6"


VARIANTS: dict[str, MobileNetV2Config] = {
    "mobilenetv2_035": MobileNetV2Config(width_mult=0.35),
    "mobilenetv2_050": MobileNetV2Config(width_mult=0.50),
    "mobilenetv2_075": MobileNetV2Config(width_mult=0.75),
    "mobilenetv2_100": MobileNetV2Config(width_mult=1.00),
    "mobilenetv2_140": MobileNetV2Config(width_mult=1.40),
}

# ImageNet top-1 of the paper's multipliers at 224×224 (Table 4 and the reference checkpoints' table).
PAPER_TOP1: dict[str, float] = {
    "mobilenetv2_035": 60.3,
    "mobilenetv2_050": 65.4,
    "mobilenetv2_075": 69.8,
    "mobilenetv2_100": 72.0,
    "mobilenetv2_140": 74.7,
}


class MobileNetV2(EdgeModel):
    """MobileNetV2 classifier / backbone built from a :class:`MobileNetV2Config`."""

    def __init__(
        self,
        config: MobileNetV2Config,
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
        if not check_number("bn_eps", bn_eps, low=0.0) > 0:
            raise ValueError(f"bn_eps must be > 0, got {bn_eps!r}")
        self.config = config
        self.num_classes = num_classes

        def width(chs: int) -> int:
            return make_divisible(chs * alpha, CHANNEL_DIVISOR)

        stem_chs = width(config.stem_chs)
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, act=config.act, bn_eps=bn_eps)

        # timm's EfficientNet schedule (rate · i / total), which its MobileNetV2 weights were trained with
        dpr = drop_path_rates(drop_path_rate, [s.repeats for s in config.stages], schedule="block_index")
        stages: list[nn.Module] = []
        feature_info = []
        self._feature_stages: list[int] = []  # the stage whose output is each feature level
        in_chs, reduction = stem_chs, 2
        for idx, stage in enumerate(config.stages):
            out_chs = width(stage.out_chs)
            blocks = []
            for j in range(stage.repeats):
                block_in = in_chs if j == 0 else out_chs
                expand = stage.expansion != 1
                blocks.append(
                    InvertedResidual(
                        block_in,
                        out_chs,
                        mid_chs=make_divisible(block_in * stage.expansion, CHANNEL_DIVISOR) if expand else block_in,
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if j == 0 else 1,
                        act=config.act,
                        expand=expand,
                        drop_path=dpr[idx][j],
                        bn_eps=bn_eps,
                    )
                )
            stages.append(nn.Sequential(*blocks))
            reduction *= stage.stride
            in_chs = out_chs
            # A feature level is the last map at each resolution: the stage before a strided one, and the last.
            is_last = idx == len(config.stages) - 1
            if is_last or config.stages[idx + 1].stride > 1:
                feature_info.append(feature_entry(out_chs, reduction, f"stages.{idx}"))
                self._feature_stages.append(idx)
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info

        # The last conv keeps its full width for α < 1 (Sec. 6.1) and grows with α > 1.
        self.num_features = max(config.head_chs, width(config.head_chs))
        self.conv_head = ConvNormAct(in_chs, self.num_features, 1, act=config.act, bn_eps=bn_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = classifier_or_identity(self.num_features, num_classes)
        self.default_cfg = default_cfg or make_default_cfg(first_conv="stem.conv", classifier="classifier")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv_head(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(x.mean((2, 3), keepdim=True), 1)
        if pre_logits:
            return x
        return self.classifier(self.head_drop(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = validate_num_classes(num_classes)
        check_avg_pool(global_pool, why="the only pooling MobileNetV2 uses")
        self.classifier = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        wanted = {self._feature_stages[i] for i in indices}
        return forward_stages(x, self.stages, wanted, stem=self.stem)

    def head_modules(self) -> list[str]:
        return ["conv_head", "head_drop", "classifier"]


def _default_cfg(img_size: int | tuple[int, int] | None) -> dict[str, Any]:
    h, w = to_2tuple(img_size if img_size is not None else 224, name="img_size")
    return make_default_cfg(input_size=(3, h, w), first_conv="stem.conv", classifier="classifier")


_BUILD_DOC = """Build ``{name}``; ``width_mult`` replaces the variant's α, ``bn_eps`` the BatchNorm epsilon."""


for _name in VARIANTS:
    register_model(
        _name,
        family=FAMILY,
        builder=width_mult_builder(
            _name, model_cls=MobileNetV2, config=VARIANTS[_name], default_cfg=_default_cfg, doc=_BUILD_DOC
        ),
        default_cfg=_default_cfg(None),
        imagenet_top1=PAPER_TOP1[_name],
    )
