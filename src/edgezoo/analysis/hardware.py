"""Hardware descriptions for the roofline model: presets with their sources, and calibration of this host.

A roofline (Williams et al., 2009) needs two numbers per device: the peak MAC rate and the memory bandwidth. Their
ratio, the ridge point in MACs per byte, separates compute-bound layers (above it) from memory-bound ones.
MobileNetV4 (Qin et al., 2024, §3, Fig. 2) uses exactly this view to design one model family that is fast from
mobile CPUs (ridge point near 0) to accelerators (ridge point in the hundreds).

Three optional, *calibrated* terms extend the pure roofline for hosts where it misses (see BENCHMARKS.md):
``layer_overhead_s``, a fixed cost per executed layer (framework dispatch, kernel launch);
``depthwise_efficiency``, the fraction of peak MAC throughput that depthwise/grouped convolutions reach (they
cannot use the matrix units a dense GEMM saturates); and ``memory_overlap``, how much of the shorter of compute and
memory time hides behind the longer (1 = the roofline's ``max``, 0 = they add up, as in a CPU core that stalls on
loads). Presets leave them at the pure-roofline values (0, 1, 1); :func:`calibrate` measures them on this host.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import KW_ONLY, asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

CACHE_ENV = "EDGEZOO_CACHE_DIR"
HOST_FILE = "hardware_host.json"
_DTYPES = ("float32", "float16", "bfloat16", "int8")


@dataclass(frozen=True)
class Hardware:
    """A device as the roofline sees it.

    ``peak_macs_per_s``: multiply-accumulates per second at ``dtype``; ``bytes_per_s``: memory bandwidth.
    """

    name: str
    peak_macs_per_s: float
    bytes_per_s: float
    _: KW_ONLY
    dtype: str = "float32"
    layer_overhead_s: float = 0.0
    depthwise_efficiency: float = 1.0
    memory_overlap: float = 1.0
    source: str = ""
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for arg in ("peak_macs_per_s", "bytes_per_s"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{arg} must be a positive finite number, got {v!r}")
        v = self.layer_overhead_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"layer_overhead_s must be a finite number >= 0 (seconds per layer), got {v!r}")
        v = self.depthwise_efficiency
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"depthwise_efficiency must be a number in (0, 1], got {v!r}")
        v = self.memory_overlap
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"memory_overlap must be a number in [0, 1], got {v!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")

    @property
    def ridge_point(self) -> float:
        """MACs per byte at which a layer takes as long to compute as to move its bytes."""
        return self.peak_macs_per_s / self.bytes_per_s

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def with_ridge_point(self, ridge_point: float) -> "Hardware":
        """Same peak MAC rate, bandwidth set so the ridge point is ``ridge_point`` (MobileNetV4's sweep)."""
        if isinstance(ridge_point, bool) or not isinstance(ridge_point, (int, float)) or not ridge_point > 0:
            raise ValueError(f"ridge_point must be a positive number (MACs per byte), got {ridge_point!r}")
        return replace(self, name=f"{self.name}@RP{ridge_point:g}", bytes_per_s=self.peak_macs_per_s / ridge_point)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Hardware":
        known = {f for f in cls.__dataclass_fields__ if f != "_"}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------------------------------------------
# Presets: published peak numbers. Peaks are theoretical (vendor or micro-architecture figures); real kernels reach
# a fraction of them, so these presets rank models and show bounds rather than promise milliseconds.

PRESETS: dict[str, Hardware] = {
    h.name: h
    for h in (
        Hardware(
            "phone_cpu", 2.84e9 * 16, 51.2e9,
            source="One Arm Cortex-X1 core (Snapdragon 888 prime core, 2.84 GHz): 4 × 128-bit NEON FMA pipes = "
                   "16 fp32 MAC/cycle (Arm Cortex-X1 software optimization guide); LPDDR5-6400, 4 × 16-bit "
                   "channels = 51.2 GB/s (Qualcomm SD888 product brief).",
        ),
        Hardware(
            "phone_gpu", 1.7e12, 51.2e9, dtype="float16",
            source="Adreno 660 (Snapdragon 888): ~1.7 TFLOPS fp32 as publicly reported, twice that at fp16, i.e. "
                   "~1.7 TMAC/s fp16; shares the SoC's LPDDR5 at 51.2 GB/s.",
        ),
        Hardware(
            "edgetpu", 2e12, 17.1e9, dtype="int8",
            source="EdgeTPU-class accelerator: Google Coral Edge TPU, 4 TOPS int8 (Coral datasheet) = 2 TMAC/s; "
                   "weights/activations streamed from LPDDR4X-4266, 32-bit bus = 17.1 GB/s.",
        ),
        Hardware(
            "desktop_cpu", 16 * 16 * 4.5e9, 83.2e9,
            source="AMD Ryzen 9 7950X: 16 cores × 2 × 256-bit FMA = 16 fp32 MAC/cycle/core at ~4.5 GHz all-core "
                   "(AMD Zen 4 docs); DDR5-5200 dual channel = 83.2 GB/s.",
        ),
        Hardware(
            "a100", 312e12 / 2, 2.039e12, dtype="float16",
            source="NVIDIA A100 SXM4 80GB: 312 TFLOPS dense fp16 tensor core = 156 TMAC/s; HBM2e 2,039 GB/s "
                   "(NVIDIA A100 datasheet).",
        ),
        Hardware(
            "h100", 989.4e12 / 2, 3.35e12, dtype="float16",
            source="NVIDIA H100 SXM5: 989.4 TFLOPS dense fp16/bf16 tensor core = 494.7 TMAC/s; HBM3 3.35 TB/s "
                   "(NVIDIA H100 datasheet).",
        ),
    )
}


def cache_dir() -> Path:
    """Where calibration results live: ``$EDGEZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgezoo``, else ~/.cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgezoo"


def host_file() -> Path:
    return cache_dir() / HOST_FILE


def load_host() -> Hardware | None:
    """The stored ``host`` calibration, or None when there is none (or it is unreadable)."""
    path = host_file()
    if not path.is_file():
        return None
    try:
        return Hardware.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, OSError):
        return None


def save_host(hw: Hardware) -> Path:
    from ..checkpoint import atomic_write_bytes

    path = host_file()
    atomic_write_bytes(path, (json.dumps(hw.to_dict(), indent=2) + "\n").encode())
    return path


def get_hardware(name: str | Hardware, *, calibrate_if_missing: bool = True) -> Hardware:
    """A preset by name, ``"host"`` (the stored calibration; calibrates and stores it on first use), or a
    :class:`Hardware` passed through."""
    if isinstance(name, Hardware):
        return name
    if not isinstance(name, str):
        raise TypeError(f"hardware must be a preset name or a Hardware, got {name!r}")
    if name in PRESETS:
        return PRESETS[name]
    if name == "host":
        hw = load_host()
        if hw is None:
            if not calibrate_if_missing:
                raise ValueError(f"no host calibration stored in {str(host_file())!r}; run `edgezoo calibrate`")
            hw = calibrate()
            save_host(hw)
        return hw
    raise ValueError(f"unknown hardware preset {name!r}; allowed: {', '.join([*PRESETS, 'host'])}")


# ----------------------------------------------------------------------------------------------------------------
# Calibration


def _best_time(fn: Callable[[], Any], *, repeats: int, inner: int = 1) -> float:
    """Fastest of ``repeats`` timings of ``inner`` calls, per call. On a shared machine interference only ever
    slows a run down, so the minimum is the best estimate of what the hardware can do."""
    fn()  # warm-up (allocations, kernel selection)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def _median_time(fn: Callable[[], Any], *, repeats: int, inner: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return times[len(times) // 2]


def measure_peak_macs(*, size: int = 512, repeats: int = 25) -> float:
    """MAC/s of a large fp32 GEMM (``size³`` MACs), the best case for the compute units."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    t = _best_time(lambda: torch.mm(a, b, out=out), repeats=repeats)
    return size ** 3 / t


def measure_bandwidth(*, mebibytes: int = 8, repeats: int = 25) -> float:
    """Bytes/s of a tensor copy (each byte read once and written once) of ``mebibytes``.

    The default, 8 MiB, is the size of the largest activation maps of batch-1 inference at 224 px: those layers
    stream through the last-level cache, not DRAM, so this is the bandwidth they see (measured: DRAM-sized copies
    rank the zoo worse, see BENCHMARKS.md)."""
    n = mebibytes * 2 ** 20 // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    t = _best_time(lambda: dst.copy_(src), repeats=repeats)
    return 2 * n * 4 / t


def _micro_layers(*, tiny: bool) -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    """Layers of the kinds the zoo is made of (dense/pointwise convs, norms, activations, token linears).

    ``tiny``: on 2×2 maps / 4 tokens, where the time is all fixed cost; otherwise at mid-network sizes, where
    compute and memory time are both substantial.
    """
    nn = torch.nn
    chs, size, tokens, dim = (8, 2, 4, 8) if tiny else (64, 28, 197, 192)
    return [
        (nn.Conv2d(chs, chs, 1, bias=False), (1, chs, size, size)),
        (nn.Conv2d(chs, chs, 3, padding=1, bias=False), (1, chs, size, size)),
        (nn.BatchNorm2d(chs), (1, chs, size, size)),
        (nn.ReLU(), (1, chs, size, size)),
        (nn.Hardswish(), (1, chs, size, size)),
        (nn.LayerNorm(dim), (1, tokens, dim)),
        (nn.Linear(dim, dim), (1, tokens, dim)),
        (nn.GELU(), (1, tokens, dim)),
    ]


def measure_layer_overhead(*, repeats: int = 9, inner: int = 100) -> float:
    """Seconds per call of layers doing almost no work (every kind of :func:`_micro_layers` on a 2×2 map).

    That is the fixed price of running a layer at all in eager PyTorch (Python module call, dispatch, kernel
    selection), which the pure roofline ignores and which dominates small layers on CPU.
    """
    times = []
    with torch.no_grad():
        for layer, shape in _micro_layers(tiny=True):
            layer.eval()
            x = torch.randn(shape)
            times.append(_best_time(lambda: layer(x), repeats=repeats, inner=inner))
    return sum(times) / len(times)


def measure_memory_overlap(peak_macs_per_s: float, bytes_per_s: float, overhead_s: float, *,
                           repeats: int = 9, inner: int = 10) -> float:
    """How far compute and memory time overlap in real layers: 1 = fully (the pure roofline's max), 0 = not at
    all (time = compute + memory). Fitted on mid-size layers as the share of ``min(compute, memory)`` that their
    measured time does *not* hide behind ``max(compute, memory)``."""
    # The pure roofline's two times per layer, computed here rather than through roofline.roofline: roofline.py
    # imports this module for Hardware, so importing it back would make the two modules a cycle.
    from .profiler import profile

    exposed = hidden = 0.0
    with torch.no_grad():
        for layer, shape in _micro_layers(tiny=False):
            layer.eval()
            x = torch.randn(shape)
            t = _best_time(lambda: layer(x), repeats=repeats, inner=inner) - overhead_s
            for lc in profile(layer, shape).layers:
                compute_s, memory_s = lc.macs / peak_macs_per_s, lc.bytes / bytes_per_s
                exposed += max(0.0, min(t - max(compute_s, memory_s), min(compute_s, memory_s)))
                hidden += min(compute_s, memory_s)
    return 1.0 - exposed / hidden if hidden else 1.0


def measure_depthwise_efficiency(peak_macs_per_s: float, bytes_per_s: float, overhead_s: float, *,
                                 repeats: int = 7) -> float:
    """Fraction of the GEMM peak that a 3×3 depthwise conv reaches, from the time it takes beyond the roofline's
    memory time. Measured on typical MobileNet shapes and averaged (geometric mean)."""
    shapes = ((96, 56), (144, 28), (384, 14), (960, 7))
    effs = []
    with torch.no_grad():
        for chs, size in shapes:
            conv = torch.nn.Conv2d(chs, chs, 3, padding=1, groups=chs, bias=False).eval()
            x = torch.randn(1, chs, size, size)
            t = _best_time(lambda: conv(x), repeats=repeats, inner=20) - overhead_s
            macs = chs * 9 * size * size
            memory_s = (2 * x.numel() + conv.weight.numel()) * 4 / bytes_per_s
            if t <= memory_s:  # the roofline already explains it: no extra inefficiency
                effs.append(1.0)
                continue
            effs.append(min(1.0, macs / peak_macs_per_s / t))
    return float(math.exp(sum(math.log(e) for e in effs) / len(effs)))


def calibrate(*, threads: int | None = None, quick: bool = False, name: str = "host",
              progress: Callable[[str], None] | None = None) -> Hardware:
    """Measure this host: GEMM peak, copy bandwidth, per-layer overhead and depthwise efficiency.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (default: the current setting) and is stored,
    so latency measurements can use the same. ``quick`` uses smaller problems (for tests).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    say = progress or (lambda _msg: None)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        say("peak MAC rate (GEMM)")
        peak = measure_peak_macs(size=256 if quick else 512, repeats=3 if quick else 25)
        say("memory bandwidth (copy)")
        bw = measure_bandwidth(mebibytes=4 if quick else 8, repeats=3 if quick else 25)
        say("per-layer overhead")
        overhead = measure_layer_overhead(repeats=3 if quick else 9, inner=10 if quick else 100)
        say("compute/memory overlap")
        overlap = measure_memory_overlap(peak, bw, overhead, repeats=2 if quick else 9, inner=2 if quick else 10)
        say("depthwise efficiency")
        dw_eff = measure_depthwise_efficiency(peak, bw, overhead, repeats=2 if quick else 7)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
    return Hardware(
        name, peak, bw,
        layer_overhead_s=overhead,
        depthwise_efficiency=max(dw_eff, 1e-3),
        memory_overlap=overlap,
        threads=used_threads,
        source=f"measured by edgezoo calibrate on {platform.node() or 'this host'} ({platform.processor() or platform.machine()}), "
               f"torch {torch.__version__}, {used_threads} thread(s), {time.strftime('%Y-%m-%d %H:%M')}",
    )
