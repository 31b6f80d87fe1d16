"""Stand-in latency source until :mod:`edgezoo.search.latency` (per-block roofline, host table, corrected roofline)
is merged: the roofline model of :mod:`edgezoo.analysis` summed block by block, each block profiled once.

Delete this file (and the fallback branch in :func:`edgezoo.search.pipeline.make_latency_fn`) once ``latency.py``
provides ``latency_predictor``. Summing per block equals profiling the whole model, because the roofline model is
already a sum over layers (tested in ``tests/test_search_cli.py``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..analysis import get_hardware, profile, roofline
from ..layers.conv import ConvNormAct
from ..models.mobilenet_v4 import MobileNetV4Config, _make_block


class BlockRooflineLatency:
    """``predict_ms(config, img_size)``: roofline latency (ms, batch 1) of a MobileNetV4 config on ``hardware``."""

    source = "roofline"

    def __init__(self, hardware: str, *, num_classes: int = 10) -> None:
        self.hardware = get_hardware(hardware, calibrate_if_missing=True)
        self.num_classes = num_classes
        self._cache: dict[Any, float] = {}

    def _ms(self, key: Any, make: Any, shape: tuple[int, ...]) -> float:
        if key not in self._cache:
            with torch.device("meta"):
                module = make()
            prof = profile(module, (1, *shape), self.hardware.torch_dtype)
            self._cache[key] = roofline(prof, self.hardware).latency_ms
        return self._cache[key]

    def predict_ms(self, config: MobileNetV4Config, img_size: int) -> float:
        act = config.act
        size = (img_size + 1) // 2
        total = self._ms(("stem", config.stem_chs, img_size, act),
                         lambda: ConvNormAct(3, config.stem_chs, 3, stride=2, act=act), (3, img_size, img_size))
        chs = config.stem_chs
        for stage in config.stages:
            for spec in stage:
                for r in range(spec.repeats):
                    stride = getattr(spec, "stride", 1) if r == 0 else 1
                    key = (spec.__class__.__name__, spec, stride, chs, size, act, config.layer_scale_init)
                    total += self._ms(key, lambda s=spec, c=chs, st=stride: _make_block(
                        s, c, stride=st, act=act, layer_scale_init=config.layer_scale_init, drop_path=0.0),
                        (chs, size, size))
                    size = (size + 1) // 2 if stride > 1 else size  # "same" padding: ceil(H / 2) for odd kernels
                    chs = spec.out_chs
        head_key = ("head", chs, config.head_chs, size, act, self.num_classes)
        total += self._ms(head_key, lambda: nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvNormAct(chs, config.head_chs, 1, act=act), nn.Flatten(1),
            nn.Linear(config.head_chs, self.num_classes)), (chs, size, size))
        return total
