"""Converters for MobileNet V1–V3 from timm's and torchvision's state-dict keys.

edgezoo keeps every conv+BN pair as a ``ConvNormAct`` (``.conv`` / ``.bn``), so the mapping is mostly "attach the BN
to the conv it follows". timm numbers its BNs per block (``bn1``, ``bn2``, ``bn3``) and the meaning depends on the
block type, which the converter reads from the keys themselves (an inverted residual has ``conv_pwl``, a
depthwise-separable block has only ``conv_dw`` + ``conv_pw``, timm's ``ConvBnAct`` block has ``conv``).

torchvision numbers all blocks flatly (``features.<k>``); the stage boundaries come from edgezoo's variant tables.
Its MobileNetV3 classifier starts with ``Linear(960 → 1280)`` applied after pooling, which is exactly edgezoo's
``conv_head`` 1×1 conv on the pooled 1×1 map: the weight is reshaped to ``(1280, 960, 1, 1)``.

torchvision's MobileNetV3 uses BatchNorm eps 1e-3 (momentum 0.01); a converter only moves tensors, so build the model
with ``bn_eps=1e-3`` to reproduce its outputs::

    edgezoo.create_model("mobilenetv3_large_100", bn_eps=1e-3, checkpoint="mobilenet_v3_large-8738ca79.pth")

MobileNetV2 in torchvision uses the default 1e-5, so no override is needed there.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from ..models import mobilenet_v2, mobilenet_v3
from . import register_converter

# timm's per-block BN names → the conv each one follows, by block type.
_TIMM_INVERTED_RESIDUAL = {"conv_pw": "conv_pw", "bn1": "conv_pw", "conv_dw": "conv_dw", "bn2": "conv_dw",
                           "conv_pwl": "conv_pwl", "bn3": "conv_pwl"}
_TIMM_SEPARABLE_V1 = {"conv_dw": "conv_dw", "bn1": "conv_dw", "conv_pw": "conv_pw", "bn2": "conv_pw"}
# In V2/V3 the expansion-free first block is edgezoo's InvertedResidual without expansion: its 1×1 is linear.
_TIMM_SEPARABLE_LINEAR = {"conv_dw": "conv_dw", "bn1": "conv_dw", "conv_pw": "conv_pwl", "bn2": "conv_pwl"}

_TIMM_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.([a-z_0-9]+)\.(.+)")
_TIMM_TOP_LEVEL = {
    "conv_stem.weight": "stem.conv.weight",
}


def _timm_block_kind(state_dict: Mapping[str, Tensor], prefix: str) -> str:
    if f"{prefix}.conv_pwl.weight" in state_dict:
        return "inverted_residual"
    if f"{prefix}.conv.weight" in state_dict:
        return "conv"
    return "separable"


def _convert_timm(
    state_dict: Mapping[str, Tensor], *, separable: Mapping[str, str], head_has_bn: bool
) -> dict[str, Tensor]:
    """Rename timm MobileNet keys; keys that are not timm's pass through unchanged (strict loading reports them)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = _TIMM_TOP_LEVEL.get(key)
        if new is None and key.startswith("bn1."):
            new = "stem.bn." + key[len("bn1."):]
        elif new is None and head_has_bn and key == "conv_head.weight":
            new = "conv_head.conv.weight"
        elif new is None and head_has_bn and key.startswith("bn2."):
            new = "conv_head.bn." + key[len("bn2."):]
        elif new is None:
            match = _TIMM_BLOCK_KEY.fullmatch(key)
            if match:
                stage, block, child, rest = match.groups()
                prefix = f"blocks.{stage}.{block}"
                kind = _timm_block_kind(state_dict, prefix)
                target = f"stages.{stage}.{block}"
                if child == "se":
                    new = f"{target}.se.{rest}"
                elif kind == "conv":  # timm's ConvBnAct: conv + bn1 → our ConvNormAct
                    new = {"conv": f"{target}.conv.{rest}", "bn1": f"{target}.bn.{rest}"}.get(child)
                else:
                    table = _TIMM_INVERTED_RESIDUAL if kind == "inverted_residual" else separable
                    owner = table.get(child)
                    if owner is not None:
                        part = "conv" if child.startswith("conv") else "bn"
                        new = f"{target}.{owner}.{part}.{rest}"
        out[new if new is not None else key] = value
    return out


@register_converter("mobilenetv1", "timm")
def mobilenetv1_from_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return _convert_timm(state_dict, separable=_TIMM_SEPARABLE_V1, head_has_bn=False)


@register_converter("mobilenetv2", "timm")
def mobilenetv2_from_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return _convert_timm(state_dict, separable=_TIMM_SEPARABLE_LINEAR, head_has_bn=True)


@register_converter("mobilenetv3", "timm")
def mobilenetv3_from_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # V3's conv_head is a plain conv with bias (no BN), named the same in both libraries.
    return _convert_timm(state_dict, separable=_TIMM_SEPARABLE_LINEAR, head_has_bn=False)


# --- torchvision ------------------------------------------------------------------------------------------------

def _block_positions(stage_lengths: list[int]) -> list[str]:
    """``stages.<i>.<j>`` for each block in torchvision's flat order."""
    return [f"stages.{i}.{j}" for i, n in enumerate(stage_lengths) for j in range(n)]


def _not_torchvision(name: str, key: str) -> ValueError:
    return ValueError(f"key {key!r} is not a torchvision MobileNet key for model {name!r}")


def _conv_norm(prefix: str, index: str, rest: str) -> str:
    """torchvision's ``Conv2dNormActivation`` children ``0`` (conv) / ``1`` (bn) → ``conv`` / ``bn``."""
    return f"{prefix}.{ {'0': 'conv', '1': 'bn'}[index] }.{rest}"


@register_converter("mobilenetv2", "torchvision")
def mobilenetv2_from_torchvision(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``mobilenet_v2`` (any ``width_mult``) → edgezoo MobileNetV2 keys."""
    config = mobilenet_v2.VARIANTS[name]
    positions = _block_positions([s.repeats for s in config.stages])
    head_index = len(positions) + 1
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            if k == 0 or k == head_index:
                cn = re.fullmatch(r"([01])\.(.+)", rest)
                if not cn:
                    raise _not_torchvision(name, key)
                out[_conv_norm("stem" if k == 0 else "conv_head", cn.group(1), cn.group(2))] = value
                continue
            if not 1 <= k <= len(positions):
                raise _not_torchvision(name, key)
            target = positions[k - 1]
            expands = f"features.{k}.conv.3.weight" in state_dict
            # expanding block: conv.0 expand (ConvBNReLU), conv.1 depthwise, conv.2 1×1 linear, conv.3 its BN;
            # t = 1 block:    conv.0 depthwise,                          conv.1 1×1 linear, conv.2 its BN.
            order = ["conv_pw", "conv_dw"] if expands else ["conv_dw"]
            sub = re.fullmatch(r"conv\.(\d+)\.(.+)", rest)
            if not sub:
                raise _not_torchvision(name, key)
            idx, tail = int(sub.group(1)), sub.group(2)
            if idx < len(order):
                cn = re.fullmatch(r"([01])\.(.+)", tail)
                if not cn:
                    raise _not_torchvision(name, key)
                out[_conv_norm(f"{target}.{order[idx]}", cn.group(1), cn.group(2))] = value
            elif idx == len(order):
                out[f"{target}.conv_pwl.conv.{tail}"] = value
            elif idx == len(order) + 1:
                out[f"{target}.conv_pwl.bn.{tail}"] = value
            else:
                raise _not_torchvision(name, key)
        elif key.startswith("classifier.1."):
            out["classifier." + key[len("classifier.1."):]] = value
        else:
            raise _not_torchvision(name, key)
    return out


@register_converter("mobilenetv3", "torchvision", build_overrides={"bn_eps": 1e-3})
def mobilenetv3_from_torchvision(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``mobilenet_v3_large`` / ``mobilenet_v3_small`` → edgezoo MobileNetV3 keys.

    Remember ``bn_eps=1e-3`` when building the model (see the module docstring).
    """
    config = mobilenet_v3.VARIANTS[name]
    positions = _block_positions([len(s) for s in config.stages])
    last_index = len(positions) + 1
    last_stage = f"stages.{len(config.stages)}.0"
    # Per block: the sub-module indices that are conv+BN (not the SE), in order.
    conv_slots: dict[int, list[int]] = {}
    for key in state_dict:
        m = re.fullmatch(r"features\.(\d+)\.block\.(\d+)\.(\d)\.weight", key)
        if m:
            conv_slots.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    for slots in conv_slots.values():
        slots[:] = sorted(set(slots))

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            if k == 0 or k == last_index:
                cn = re.fullmatch(r"([01])\.(.+)", rest)
                if not cn:
                    raise _not_torchvision(name, key)
                out[_conv_norm("stem" if k == 0 else last_stage, cn.group(1), cn.group(2))] = value
                continue
            if not 1 <= k <= len(positions):
                raise _not_torchvision(name, key)
            target = positions[k - 1]
            se = re.fullmatch(r"block\.\d+\.fc([12])\.(.+)", rest)
            if se:
                part = "conv_reduce" if se.group(1) == "1" else "conv_expand"
                out[f"{target}.se.{part}.{se.group(2)}"] = value
                continue
            sub = re.fullmatch(r"block\.(\d+)\.([01])\.(.+)", rest)
            slots = conv_slots.get(k, [])
            if not sub or len(slots) not in (2, 3) or int(sub.group(1)) not in slots:
                raise _not_torchvision(name, key)
            roles = ["conv_pw", "conv_dw", "conv_pwl"] if len(slots) == 3 else ["conv_dw", "conv_pwl"]
            role = roles[slots.index(int(sub.group(1)))]
            out[_conv_norm(f"{target}.{role}", sub.group(2), sub.group(3))] = value
        elif key in ("classifier.0.weight", "classifier.0.bias"):
            # Linear(960 → 1280) after pooling == 1×1 conv on the pooled map.
            out["conv_head." + key.rsplit(".", 1)[1]] = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value
        elif key.startswith("classifier.3."):
            out["classifier." + key[len("classifier.3."):]] = value
        else:
            raise _not_torchvision(name, key)
    return out

