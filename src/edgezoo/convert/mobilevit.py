"""timm → edgezoo keys for MobileViT (``mobilevit_xxs`` / ``_xs`` / ``_s``).

timm builds MobileViT with its generic ByobNet: MV2 blocks are ``BottleneckBlock``s (``conv1_1x1`` / ``conv2_kxk`` /
``conv3_1x1``), the MobileViT block names its parts ``conv_kxk`` / ``conv_1x1`` / ``conv_proj`` and the classifier
lives at ``head.fc``. Transformer layers, the stem and the final conv already share edgezoo's names. Checkpoints of
timm's ``features_only`` wrapper (``stages_2.1…``) are accepted too.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from . import register_converter, rename_keys

_STAGE = r"stages[._](\d+)\.(\d+)"

_TIMM_RULES = (
    # MV2 inverted residual: expand 1×1, depthwise k×k, linear 1×1
    (rf"{_STAGE}\.conv1_1x1\.(.+)", r"stages.\1.\2.conv_pw.\3"),
    (rf"{_STAGE}\.conv2_kxk\.(.+)", r"stages.\1.\2.conv_dw.\3"),
    (rf"{_STAGE}\.conv3_1x1\.(.+)", r"stages.\1.\2.conv_pwl.\3"),
    # MobileViT block
    (rf"{_STAGE}\.conv_kxk\.(.+)", r"stages.\1.\2.conv_local.\3"),
    (rf"{_STAGE}\.conv_1x1\.(.+)", r"stages.\1.\2.proj_in.\3"),
    (rf"{_STAGE}\.conv_proj\.(.+)", r"stages.\1.\2.proj_out.\3"),
    (rf"{_STAGE}\.(conv_fusion|norm|transformer)\.(.+)", r"stages.\1.\2.\3.\4"),
    # stem, final 1×1 conv, classifier
    (r"(stem|final_conv)\.(conv|bn)\.(.+)", r"\1.\2.\3"),
    (r"head\.fc\.(weight|bias)", r"classifier.\1"),
)
_COMPILED = [re.compile(pattern) for pattern, _ in _TIMM_RULES]


@register_converter("mobilevit", "timm")
def convert_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename timm's MobileViT keys; a key that is not a timm MobileViT key raises ``ValueError`` naming it."""
    unknown = [k for k in state_dict if not any(p.fullmatch(k) for p in _COMPILED)]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(f"state_dict for {name!r} has keys that are not timm MobileViT keys: {shown}{more}")
    return rename_keys(state_dict, _TIMM_RULES)
