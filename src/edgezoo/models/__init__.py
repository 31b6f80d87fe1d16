"""Model families, one module per paper; importing this package registers every variant."""
from . import (  # noqa: F401  (imported for their registrations)
    edgenext,
    mlp_mixer,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    mobilenet_v4,
    mobilevit,
    vit,
)
from ._base import EdgeModel

__all__ = ["EdgeModel"]
