"""timm → edgezoo keys for MobileNetV4 (``mobilenetv4_*``).

edgezoo keeps every conv+BN pair in one ``ConvNormAct`` (children ``conv``/``bn``), where timm sometimes has a bare
conv next to a separately named norm. The UIB and layer-scale keys are already the same. The differences:

============================================  ==============================================
timm                                          edgezoo
============================================  ==============================================
``conv_stem.weight``, ``bn1.*``               ``conv_stem.conv.weight``, ``conv_stem.bn.*``
``conv_head.weight``, ``norm_head.*``         ``conv_head.conv.weight``, ``conv_head.bn.*``
plain conv block ``B.conv``, ``B.bn1``        ``B.conv``, ``B.bn``
fused IB ``B.conv_exp``/``B.bn1``             ``B.conv_exp.conv``/``B.conv_exp.bn``
fused IB ``B.conv_pwl``/``B.bn2``             ``B.conv_pwl.conv``/``B.conv_pwl.bn``
MQA ``B.attn.{key,value}.down_conv``/``norm``  ``B.attn.{key,value}_down.conv``/``.bn``
MQA ``B.attn.{query,key,value}.proj``         ``B.attn.{query,key,value}_proj``
MQA ``B.attn.query.norm``                     ``B.attn.query_norm``
MQA ``B.attn.output.proj``                    ``B.attn.out_proj``
============================================  ==============================================

A block's ``bn1`` means different things in a plain conv block and a fused IB; which one it is follows from the
block's own keys (a fused IB has ``conv_exp``), so the converter needs no model.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from . import register_converter, rename_keys

_BLOCK = r"(blocks\.\d+\.\d+)"

_COMMON_RULES = [
    (r"conv_stem\.weight", r"conv_stem.conv.weight"),
    (r"bn1\.(.+)", r"conv_stem.bn.\1"),
    (r"conv_head\.weight", r"conv_head.conv.weight"),
    (r"norm_head\.(.+)", r"conv_head.bn.\1"),
    (_BLOCK + r"\.attn\.(key|value)\.down_conv\.(.+)", r"\1.attn.\2_down.conv.\3"),
    (_BLOCK + r"\.attn\.(key|value)\.norm\.(.+)", r"\1.attn.\2_down.bn.\3"),
    (_BLOCK + r"\.attn\.query\.norm\.(.+)", r"\1.attn.query_norm.\2"),
    (_BLOCK + r"\.attn\.(query|key|value)\.proj\.(.+)", r"\1.attn.\2_proj.\3"),
    (_BLOCK + r"\.attn\.output\.proj\.(.+)", r"\1.attn.out_proj.\2"),
    (_BLOCK + r"\.(conv_exp|conv_pwl)\.weight", r"\1.\2.conv.weight"),
    (_BLOCK + r"\.bn2\.(.+)", r"\1.conv_pwl.bn.\2"),
]


@register_converter("mobilenetv4", "timm")
def convert_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename timm's ``mobilenetv4_*`` keys to edgezoo's (tensors are shared, not copied)."""
    if not any(k.startswith("conv_stem.") or k.startswith("blocks.") for k in state_dict):
        raise KeyError(f"no MobileNetV4 keys (conv_stem.*, blocks.*) in this state dict for {name!r}")
    fused = {m.group(1) for k in state_dict if (m := re.fullmatch(_BLOCK + r"\.conv_exp\.weight", k))}
    block_bn1 = re.compile(_BLOCK + r"\.bn1\.(.+)")
    staged: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = block_bn1.fullmatch(key)
        if m:  # the first BN of a block: fused IB's expansion BN, or the plain conv block's only BN
            target = "conv_exp.bn" if m.group(1) in fused else "bn"
            staged[f"{m.group(1)}.{target}.{m.group(2)}"] = value
        else:
            staged[key] = value
    return rename_keys(staged, _COMMON_RULES)
