"""Blocks shared by several model families (one file per kind of block)."""
from .activations import get_act
from .attention import Attention
from .conv import ConvNormAct, same_padding
from .drop import DropPath, drop_path, drop_path_rates
from .helpers import check_drop_rate, check_number, check_width_mult, make_divisible, to_2tuple
from .inverted_residual import InvertedResidual
from .mlp import Mlp
from .mobile_mqa import MobileMQA, MobileMQABlock
from .norm import LayerNorm2d
from .patch_embed import PatchEmbed, check_patch_size
from .pos_embed import resample_pos_embed, square_grid
from .squeeze_excite import SqueezeExcite
from .uib import FusedInvertedBottleneck, LayerScale2d, UniversalInvertedBottleneck
from .xca import CrossCovarianceAttention

__all__ = [
    "Attention",
    "ConvNormAct",
    "CrossCovarianceAttention",
    "DropPath",
    "FusedInvertedBottleneck",
    "InvertedResidual",
    "LayerNorm2d",
    "LayerScale2d",
    "Mlp",
    "MobileMQA",
    "MobileMQABlock",
    "PatchEmbed",
    "SqueezeExcite",
    "UniversalInvertedBottleneck",
    "check_drop_rate",
    "check_number",
    "check_patch_size",
    "check_width_mult",
    "drop_path",
    "drop_path_rates",
    "get_act",
    "make_divisible",
    "resample_pos_embed",
    "same_padding",
    "square_grid",
    "to_2tuple",
]
