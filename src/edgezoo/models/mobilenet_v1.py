"""MobileNetV1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861).

The network is a 3×3 stem followed by thirteen depthwise-separable layers (3×3 depthwise conv + 1×1 pointwise conv,
each with BN and ReLU6 — the TF reference's choice, the paper says ReLU), global pooling and a linear classifier.
The paper's two knobs are kept as they are:

* the width multiplier α scales every layer's channels (registered as ``mobilenetv1_025`` … ``mobilenetv1_125``,
  or any α through the ``width_mult=`` override); channels are rounded to multiples of 8 like the TF reference
  (and timm) do, which reproduces the paper's Table 6 sizes (4.2M / 2.6M / 1.3M / 0.5M parameters for
  α = 1 / 0.75 / 0.5 / 0.25; exactly 4,231,976 / 2,585,560 / 1,331,592 / 470,072 with the 1000-class head);
* the resolution multiplier ρ is simply the input size: the model is fully convolutional and accepts any H×W.

Module names: ``stem`` (ConvNormAct), ``stages.<i>.<j>`` (``SeparableConv`` blocks), ``classifier``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.conv import ConvNormAct
from ..layers.helpers import check_drop_rate, check_width_mult, make_divisible, to_2tuple
from ..registry import register_model
from ._base import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    EdgeModel,
    check_avg_pool,
    classifier_or_identity,
    feature_entry,
    forward_stages,
    make_default_cfg,
    validate_num_classes,
    width_mult_builder,
)

FAMILY = "mobilenetv1"
# The channel rounding unit of the TF reference implementation (and of timm).
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class SeparableStage:
    """A group of rows of the paper's Table 1: ``repeats`` depthwise-separable layers with ``out_chs`` outputs.

    Only the first layer of a stage is strided (its depthwise conv downsamples); ``out_chs`` is the width at α = 1.
    """

    out_chs: int
    repeats: int
    stride: int


@dataclass(frozen=True)
class MobileNetV1Config:
    """One MobileNetV1 variant: the width multiplier α plus the (α = 1) body of Table 1."""

    width_mult: float
    stem_chs: int = 32
    stages: tuple[SeparableStage, ...] = (
        SeparableStage(out_chs=64, repeats=1, stride=1),  # 112×112 in (after the stride-2 stem at 224×224)
        SeparableStage(out_chs=128, repeats=2, stride=2),  # 112×112 in
        SeparableStage(out_chs=256, repeats=2, stride=2),  # 56×56 in
        SeparableStage(out_chs=512, repeats=6, stride=2),  # 28×28 in
        # 14×14 in. Table 1 prints "s2" for the last depthwise layer too, but the output is 7×7: it is stride 1.
        SeparableStage(out_chs=1024, repeats=2, stride=2),
    )
    act: str = "relu6"


VARIANTS: dict[str, MobileNetV1Config] = {
    "mobilenetv1_025": MobileNetV1Config(width_mult=0.25),
    "mobilenetv1_050": MobileNetV1Config(width_mult=0.50),
    "mobilenetv1_075": MobileNetV1Config(width_mult=0.75),
    "mobilenetv1_100": MobileNetV1Config(width_mult=1.00),
    "mobilenetv1_125": MobileNetV1Config(width_mult=1.25),
}

# ImageNet top-1 reported in the paper (Table 6, 224×224); α = 1.25 is not in the paper.
PAPER_TOP1: dict[str, float | None] = {
    "mobilenetv1_025": 50.6,
    "mobilenetv1_050": 63.7,
    "mobilenetv1_075": 68.4,
    "mobilenetv1_100": 70.6,
    "mobilenetv1_125": None,
}


class SeparableConv(nn.Module):
    """Depthwise 3×3 conv → BN → act, then pointwise 1×1 conv → BN → act (Fig. 3 of the paper).

    Factorising a standard conv this way costs ``1/N + 1/k²`` of its multiply-adds (Sec. 3.1); V1 has no residual
    connections, so the block is a plain sequence.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu6",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv_dw = ConvNormAct(in_chs, in_chs, kernel_size, stride=stride, groups=in_chs, act=act, bn_eps=bn_eps)
        self.conv_pw = ConvNormAct(in_chs, out_chs, 1, act=act, bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_pw(self.conv_dw(x))


class MobileNetV1(EdgeModel):
    """MobileNetV1 classifier / backbone built from a :class:`MobileNetV1Config`."""

    def __init__(
        self,
        config: MobileNetV1Config,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        bn_eps: float = 1e-5,
        default_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        alpha = check_width_mult(config.width_mult)
        check_drop_rate(drop_rate)
        if isinstance(bn_eps, bool) or not isinstance(bn_eps, (int, float)) or not bn_eps > 0:
            raise ValueError(f"bn_eps must be a positive number, got {bn_eps!r}")
        self.config = config
        self.num_classes = num_classes

        def width(chs: int) -> int:
            return make_divisible(chs * alpha, CHANNEL_DIVISOR)

        stem_chs = width(config.stem_chs)
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, act=config.act, bn_eps=bn_eps)
        stages: list[nn.Module] = []
        feature_info = []
        in_chs, reduction = stem_chs, 2
        for idx, stage in enumerate(config.stages):
            out_chs = width(stage.out_chs)
            blocks = [
                SeparableConv(
                    in_chs if j == 0 else out_chs,
                    out_chs,
                    stride=stage.stride if j == 0 else 1,
                    act=config.act,
                    bn_eps=bn_eps,
                )
                for j in range(stage.repeats)
            ]
            stages.append(nn.Sequential(*blocks))
            reduction *= stage.stride
            in_chs = out_chs
            # V1's first stage is not strided, so the stem output is never a separate feature level.
            feature_info.append(feature_entry(out_chs, reduction, f"stages.{idx}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self.num_features = in_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = classifier_or_identity(self.num_features, num_classes)
        self.default_cfg = default_cfg or make_default_cfg(first_conv="stem.conv", classifier="classifier")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(x.mean((2, 3), keepdim=True), 1)
        if pre_logits:
            return x
        return self.classifier(self.head_drop(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = validate_num_classes(num_classes)
        check_avg_pool(global_pool, why="the only pooling MobileNetV1 uses")
        self.classifier = classifier_or_identity(self.num_features, num_classes)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        # Feature level i is the output of stage i (see feature_info); stop after the deepest requested level.
        return forward_stages(x, self.stages, set(indices), stem=self.stem)

    def head_modules(self) -> list[str]:
        return ["head_drop", "classifier"]


def _default_cfg(name: str, img_size: int | tuple[int, int] | None) -> dict[str, Any]:
    # timm's MobileNetV1 weights are trained with Inception-style normalisation and evaluated at 256.
    h, w = to_2tuple(img_size if img_size is not None else 224, name="img_size")
    crop_pct = 0.9 if name == "mobilenetv1_125" else 0.875
    return make_default_cfg(
        input_size=(3, h, w),
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=crop_pct,
        first_conv="stem.conv",
        classifier="classifier",
        test_input_size=(3, 256, 256),
    )


_BUILD_DOC = """Build ``{name}``. ``width_mult`` replaces the variant's α.

``drop_path_rate`` is accepted for API uniformity (as timm does) but has no effect: MobileNetV1 has no
residual branches to drop.
"""


for _name in VARIANTS:
    register_model(
        _name,
        family=FAMILY,
        builder=width_mult_builder(
            _name,
            model_cls=MobileNetV1,
            config=VARIANTS[_name],
            default_cfg=partial(_default_cfg, _name),
            doc=_BUILD_DOC,
            uses_drop_path=False,
        ),
        default_cfg=_default_cfg(_name, None),
        imagenet_top1=PAPER_TOP1[_name],
    )
