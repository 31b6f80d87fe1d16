"""Blocks shared by several model families (one file per kind of block)."""
from .activations import get_act
from .attention import Attention
from .conv import ConvNormAct, same_padding
from .drop import DropPath, drop_path, drop_path_rates
from .helpers import check_width_mult, make_divisible, to_2tuple
from .inverted_residual import InvertedResidual
from .mlp import Mlp
from .norm import LayerNorm2d
from .squeeze_excite import SqueezeExcite

__all__ = [
    "Attention",
    "ConvNormAct",
    "DropPath",
    "InvertedResidual",
    "LayerNorm2d",
    "Mlp",
    "SqueezeExcite",
    "check_width_mult",
    "drop_path",
    "drop_path_rates",
    "get_act",
    "make_divisible",
    "same_padding",
    "to_2tuple",
]
