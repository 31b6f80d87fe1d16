"""timm → edgezoo keys for ViT.

edgezoo's ViT keeps the reference layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``/``fc_norm``, ``head``), so the mapping is
the identity on those keys. What the converter adds: it recognises a timm ViT state dict (and refuses anything else,
so key-format detection can tell sources apart) and drops the ``pre_logits`` representation layer that some
original ImageNet-21k releases carry and no ImageNet-1k classifier uses. Position embeddings trained at another
resolution are resized by the model at load time (``VisionTransformer.adapt_state_dict``), not here: converters
never build a model and do not know the target grid.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from . import register_converter, rename_keys

# Keys every timm VisionTransformer with a class token and absolute position embedding has.
_SIGNATURE = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_DROP = (r"pre_logits\..*",)


@register_converter("vit", "timm")
def convert_timm_vit(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [k for k in _SIGNATURE if k not in state_dict]
    if missing:
        raise KeyError(f"not a timm ViT state dict for {name!r}: missing {missing}")
    return rename_keys(state_dict, rules=(), drop=_DROP)
