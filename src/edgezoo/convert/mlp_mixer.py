"""timm → edgezoo keys for MLP-Mixer.

edgezoo names the two halves of a Mixer layer after what they mix: timm's ``norm1``/``mlp_tokens`` become
``token_norm``/``token_mlp`` and ``norm2``/``mlp_channels`` become ``channel_norm``/``channel_mlp``. The patch stem
(``stem.proj``), the final ``norm`` and the ``head`` keep their names; tensor shapes are unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from . import register_converter, rename_keys

_RULES = (
    (r"blocks\.(\d+)\.norm1\.(.+)", r"blocks.\1.token_norm.\2"),
    (r"blocks\.(\d+)\.mlp_tokens\.(.+)", r"blocks.\1.token_mlp.\2"),
    (r"blocks\.(\d+)\.norm2\.(.+)", r"blocks.\1.channel_norm.\2"),
    (r"blocks\.(\d+)\.mlp_channels\.(.+)", r"blocks.\1.channel_mlp.\2"),
)


@register_converter("mlp_mixer", "timm")
def convert_timm_mixer(name: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if "stem.proj.weight" not in state_dict or not any(".mlp_tokens." in k for k in state_dict):
        raise KeyError(f"not a timm MLP-Mixer state dict for {name!r}: expected 'stem.proj.weight' and "
                       "'blocks.N.mlp_tokens.*' keys")
    return rename_keys(state_dict, _RULES)
