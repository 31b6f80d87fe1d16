"""timm → edgezoo keys for EdgeNeXt.

The tensors are identical (same shapes, same layouts); only names differ: timm's positional ``stem.0``/``stem.1`` and
``downsample.0``/``downsample.1`` become ``conv``/``norm``, the encoders' LayerNorm + MLP + ``gamma`` live in a
``channel_mlp`` child, and the SDTA parts are spelled out (``scale_convs``, ``pos_embed.proj``, ``xca_norm``,
``xca_layer_scale``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from . import register_converter, rename_keys

_BLOCK = r"(stages\.\d+\.blocks\.\d+)"
_PARAM = r"(weight|bias)"

_TIMM_RULES: list[tuple[str, str]] = [
    (rf"stem\.0\.{_PARAM}", r"stem.conv.\1"),
    (rf"stem\.1\.{_PARAM}", r"stem.norm.\1"),
    (rf"(stages\.\d+)\.downsample\.0\.{_PARAM}", r"\1.downsample.norm.\2"),
    (rf"(stages\.\d+)\.downsample\.1\.{_PARAM}", r"\1.downsample.conv.\2"),
    (rf"{_BLOCK}\.conv_dw\.{_PARAM}", r"\1.conv_dw.\2"),
    (rf"{_BLOCK}\.convs\.(\d+)\.{_PARAM}", r"\1.scale_convs.\2.\3"),
    (rf"{_BLOCK}\.pos_embd\.token_projection\.{_PARAM}", r"\1.pos_embed.proj.\2"),
    (rf"{_BLOCK}\.norm_xca\.{_PARAM}", r"\1.xca_norm.\2"),
    (rf"{_BLOCK}\.gamma_xca", r"\1.xca_layer_scale"),
    (rf"{_BLOCK}\.xca\.temperature", r"\1.xca.temperature"),
    (rf"{_BLOCK}\.xca\.(qkv|proj)\.{_PARAM}", r"\1.xca.\2.\3"),
    (rf"{_BLOCK}\.norm\.{_PARAM}", r"\1.channel_mlp.norm.\2"),
    (rf"{_BLOCK}\.mlp\.(fc1|fc2)\.{_PARAM}", r"\1.channel_mlp.mlp.\2.\3"),
    (rf"{_BLOCK}\.gamma", r"\1.channel_mlp.layer_scale"),
    (rf"head\.(norm|fc)\.{_PARAM}", r"head.\1.\2"),
]
_COMPILED = [re.compile(p) for p, _ in _TIMM_RULES]


@register_converter("edgenext", "timm")
def convert_timm(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm EdgeNeXt state dict (any of the four variants) to edgezoo keys.

    Raises ``ValueError`` naming the keys that are not timm EdgeNeXt keys (so key-format detection can move on).
    """
    unknown = [k for k in state_dict if not any(p.fullmatch(k) for p in _COMPILED)]
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", … ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"state_dict for {name!r} has keys that are not timm EdgeNeXt keys: {shown}")
    return rename_keys(state_dict, _TIMM_RULES)
