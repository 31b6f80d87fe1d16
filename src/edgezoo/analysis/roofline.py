"""Roofline latency: each layer takes as long as the slower of computing its MACs and moving its bytes.

MobileNetV4 (Qin et al., 2024, §3) models latency as

    MACTime_i = MACs_i / PeakMACs,   MemTime_i = (WeightBytes_i + ActivationBytes_i) / PeakMemBW,
    ModelTime = Σ_i max(MACTime_i, MemTime_i),

and sweeps the ridge point RP = PeakMACs / PeakMemBW from 0 (memory is free: CPUs) to 500 MACs/byte (accelerators)
to see which operations are cheap where. :func:`roofline` evaluates that for one :class:`Hardware`, adding the
optional calibrated terms it carries (a fixed per-layer overhead, a depthwise efficiency and a compute/memory
overlap; all neutral in the presets). :func:`ridge_sweep` is the paper's view: pure roofline, fixed peak, RP swept.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .hardware import Hardware
from .profiler import Profile

# Layer kinds that run as per-channel filters and so cannot use a GEMM's full throughput.
DEPTHWISE_KINDS = frozenset({"dwconv", "gconv"})


@dataclass(frozen=True)
class LayerTime:
    name: str
    kind: str
    macs: int
    bytes: int
    compute_s: float
    memory_s: float
    overhead_s: float

    exposed_s: float = 0.0  # part of min(compute, memory) not hidden by overlap (0 in the pure roofline)

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.exposed_s + self.overhead_s

    @property
    def bound(self) -> str:
        """``"compute"`` when the MACs take longer than the bytes, else ``"memory"``."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


@dataclass(frozen=True)
class Roofline:
    hardware: Hardware
    layers: tuple[LayerTime, ...]
    model_name: str = ""

    @property
    def latency_s(self) -> float:
        return sum(layer.time_s for layer in self.layers)

    @property
    def latency_ms(self) -> float:
        return 1e3 * self.latency_s

    @property
    def compute_s(self) -> float:
        return sum(layer.compute_s for layer in self.layers)

    @property
    def memory_s(self) -> float:
        return sum(layer.memory_s for layer in self.layers)

    @property
    def overhead_s(self) -> float:
        return sum(layer.overhead_s for layer in self.layers)

    def time_by_bound(self) -> dict[str, float]:
        """Seconds spent in compute-bound and in memory-bound layers."""
        out = {"compute": 0.0, "memory": 0.0}
        for layer in self.layers:
            out[layer.bound] += layer.time_s
        return out

    @property
    def compute_bound_fraction(self) -> float:
        total = self.latency_s
        return self.time_by_bound()["compute"] / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        by_bound = self.time_by_bound()
        return dict(
            name=self.model_name,
            hardware=self.hardware.name,
            latency_ms=self.latency_ms,
            compute_bound_ms=1e3 * by_bound["compute"],
            memory_bound_ms=1e3 * by_bound["memory"],
            overhead_ms=1e3 * self.overhead_s,
            compute_bound_fraction=self.compute_bound_fraction,
            layers=len(self.layers),
        )


def roofline(profile: Profile, hardware: Hardware) -> Roofline:
    """Predicted latency of one forward pass of ``profile`` on ``hardware`` (see the module docstring)."""
    if not isinstance(profile, Profile):
        raise TypeError(f"profile must be an edgezoo.analysis.Profile, got {type(profile).__name__}")
    if not isinstance(hardware, Hardware):
        raise TypeError(f"hardware must be an edgezoo.analysis.Hardware, got {type(hardware).__name__}")
    layers = []
    for layer in profile.layers:
        rate = hardware.peak_macs_per_s
        if layer.kind in DEPTHWISE_KINDS:
            rate *= hardware.depthwise_efficiency
        compute_s = layer.macs / rate
        memory_s = layer.bytes / hardware.bytes_per_s
        layers.append(LayerTime(
            name=layer.name,
            kind=layer.kind,
            macs=layer.macs,
            bytes=layer.bytes,
            compute_s=compute_s,
            memory_s=memory_s,
            overhead_s=hardware.layer_overhead_s,
            exposed_s=(1.0 - hardware.memory_overlap) * min(compute_s, memory_s),
        ))
    return Roofline(hardware=hardware, layers=tuple(layers), model_name=profile.model_name)


def ridge_sweep(
    profiles: Mapping[str, Profile],
    *,
    peak_macs_per_s: float,
    ridge_points: Sequence[float],
) -> dict[str, list[float]]:
    """Pure-roofline latency (seconds) of each profile at each ridge point, at a fixed peak MAC rate.

    RP = 0 means memory is free (latency = MACs / peak); larger RP means less bandwidth for the same compute, so
    low-intensity layers (depthwise convs, norms, elementwise ops) grow in cost and models reorder.
    """
    if isinstance(peak_macs_per_s, bool) or not isinstance(peak_macs_per_s, (int, float)) or peak_macs_per_s <= 0:
        raise ValueError(f"peak_macs_per_s must be a positive number, got {peak_macs_per_s!r}")
    rps = [float(r) for r in ridge_points]
    if not rps or any(r < 0 for r in rps):
        raise ValueError(f"ridge_points must be a non-empty sequence of numbers >= 0, got {ridge_points!r}")
    out: dict[str, list[float]] = {}
    for name, prof in profiles.items():
        macs = [layer.macs for layer in prof.layers]
        nbytes = [layer.bytes for layer in prof.layers]
        out[name] = [
            sum(max(m, b * rp) for m, b in zip(macs, nbytes)) / peak_macs_per_s  # bytes · RP / peak = bytes / BW
            for rp in rps
        ]
    return out
