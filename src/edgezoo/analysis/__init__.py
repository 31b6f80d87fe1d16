"""Cost analysis: per-layer profile (params, MACs, bytes), depthwise-separable arithmetic, the roofline latency
model with hardware presets and host calibration, ridge-point sweeps and plots.

>>> import torch, edgezoo
>>> from edgezoo.analysis import profile, roofline, get_hardware
>>> with torch.device("meta"):
...     model = edgezoo.create_model("mobilenetv2_100")
>>> p = profile(model, (3, 224, 224))
>>> roofline(p, get_hardware("phone_cpu")).latency_ms  # doctest: +SKIP
"""
from .hardware import PRESETS, Hardware, cache_dir, calibrate, get_hardware, load_host, save_host
from .plots import (
    format_mac_rate,
    pareto_figure,
    plot_pareto,
    plot_ridge_sweep,
    points_without,
    ridge_sweep_figure,
)
from .profiler import ConvGeometry, LayerCost, Profile, profile
from .roofline import LayerTime, Roofline, ridge_sweep, roofline
from .separable import (
    SeparableSavings,
    separable_conv_cost,
    separable_ratio,
    separable_savings,
    standard_conv_cost,
)
from .zoo import profile_model

__all__ = [
    "PRESETS",
    "ConvGeometry",
    "Hardware",
    "LayerCost",
    "LayerTime",
    "Profile",
    "Roofline",
    "SeparableSavings",
    "cache_dir",
    "calibrate",
    "get_hardware",
    "load_host",
    "format_mac_rate",
    "pareto_figure",
    "plot_pareto",
    "plot_ridge_sweep",
    "points_without",
    "ridge_sweep_figure",
    "profile",
    "profile_model",
    "ridge_sweep",
    "roofline",
    "save_host",
    "separable_conv_cost",
    "separable_ratio",
    "separable_savings",
    "standard_conv_cost",
]
