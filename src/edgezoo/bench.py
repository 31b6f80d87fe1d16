"""Inference latency measurement: medians over repeated runs after warm-up, throughput and ratios.

Timings on a shared machine are noisy, so whenever two things are compared (a backend against eager PyTorch, or
edgezoo against timm) they are timed **interleaved** — one call of each in turn — and summarized by medians; the
ratio of medians is the number to trust, not either absolute time.

``compare="timm"`` builds timm's model of the same name (timm is a test/benchmark oracle and never a dependency:
it is imported at run time only, when asked for) and loads edgezoo's weights into it through the converter
mapping in reverse, so both compute the same function.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .deploy.optimize import time_interleaved
from .devices import cpu_name
from .factory import create_model
from .registry import get_entry

BENCH_BACKENDS = ("eager", "fused", "compile", "onnxruntime", "openvino", "litert", "executorch", "int8", "auto")
COMPARE_WITH = ("timm",)


@dataclass
class BenchRow:
    """One model × backend × batch measurement. ``ratio_*`` < 1 means this row is faster than the reference."""

    model: str
    backend: str
    engine: str
    batch: int
    img_size: int
    median_ms: float
    throughput: float  # images per second
    eager_ms: float
    ratio_vs_eager: float
    timm_ms: float | None
    ratio_vs_timm: float | None
    gmacs: float
    imagenet_top1: float | None
    threads: int


def device_description() -> str:
    """CPU model and the thread count torch uses, e.g. ``'AMD EPYC (2 cores), torch threads 2'``."""
    return f"{cpu_name()} ({os.cpu_count()} logical cores), torch {torch.__version__}, {torch.get_num_threads()} threads"


def count_gmacs(model: nn.Module, x: Tensor) -> float:
    """Multiply-accumulates (GMACs) of one forward at ``x``: FLOPs counted by torch / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def timm_twin(name: str, model: nn.Module, img_size: int) -> nn.Module:
    """timm's model ``name`` computing the same function as edgezoo's ``model`` (weights copied across)."""
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise ImportError("--compare timm needs timm; install it with: pip install 'edgezoo[dev]'") from None
    kwargs = {"num_classes": model.num_classes}
    if get_entry(name).family in ("vit", "mlp_mixer"):
        kwargs["img_size"] = img_size
    ref = timm.create_model(name, pretrained=False, **kwargs).eval()
    from .convert import convert_state_dict

    # Copy our weights across by converting timm's own keys (each tagged by its index) to find the key pairs.
    # Speed does not depend on the values, so if a converter reshapes tensors and the probe fails, timm keeps
    # its own initialisation.
    ref_sd = ref.state_dict()
    keys = list(ref_sd)
    try:
        probe = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}
        mapped = convert_state_dict(name, probe, source="timm")
        ours = model.state_dict()
        new_sd = {}
        for ez_key, tag in mapped.items():
            if tag.numel() != 1 or ez_key not in ours:
                continue
            key = keys[int(tag.item())]
            if ours[ez_key].numel() == ref_sd[key].numel():
                new_sd[key] = ours[ez_key].reshape(ref_sd[key].shape)
        ref.load_state_dict(new_sd, strict=False)
    except Exception:  # noqa: BLE001 - weights are irrelevant to timing
        pass
    return ref


BLOCK = 5  # back-to-back calls per turn when timing


def _engine(backend: str, model: nn.Module, x: Tensor, precision: str | None = None) -> tuple[Callable[[Tensor], Tensor], str]:
    """(callable, name of the engine that runs it) for one bench backend (or, with ``precision``, the fastest
    engine at that precision; timing only: untrained weights have no accuracy to guard)."""
    from . import deploy

    if precision is not None:
        gen = torch.Generator().manual_seed(0)
        calib = torch.randn((16, *x.shape[1:]), generator=gen)  # timing only: ranges do not change the speed
        eng = deploy.optimize(model, x[:1], precision=precision, calib=calib if precision in ("int8", "auto") else None,
                              max_drop=None)
        return eng, eng.variant

    if backend == "eager":
        return (lambda t: model(t)), "eager"
    if backend == "fused":
        fused = deploy.fuse(model)
        return (lambda t: fused(t)), "fused"
    if backend == "int8":
        gen = torch.Generator().manual_seed(0)
        calib = torch.randn((16, *x.shape[1:]), generator=gen)  # timing only: ranges do not change the speed
        q = deploy.quantize.quantize_int8(model, calib)
        return q, f"int8/{q.backend}"
    opt = deploy.optimize(model, x, backend=backend)
    return opt, opt.variant


def benchmark(
    names: Sequence[str],
    *,
    batches: Sequence[int] = (1,),
    img_size: int | None = None,
    backend: str = "eager",
    compare: str | None = None,
    warmup: int = 5,
    repeats: int = 20,
    on_row: Callable[[BenchRow], None] | None = None,
    precision: str | None = None,
) -> list[BenchRow]:
    """Time each model at each batch size with ``backend`` (interleaved with eager PyTorch and, if asked, timm).

    ``repeats`` timed calls per runner are made in round-robin turns of up to :data:`BLOCK` back-to-back calls
    (steady state, see :func:`edgezoo.deploy.optimize.time_interleaved`); the reported latency is the median.
    """
    if backend not in BENCH_BACKENDS:
        raise ValueError(f"backend must be one of {list(BENCH_BACKENDS)}, got {backend!r}")
    if precision is not None:
        from .deploy.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if backend not in ("eager", "auto"):
            raise ValueError(f"precision={precision!r} picks the engine itself; it cannot be combined with backend={backend!r}")
        backend = "auto"
    if compare is not None and compare not in COMPARE_WITH:
        raise ValueError(f"compare must be one of {list(COMPARE_WITH)}, got {compare!r}")
    if not names:
        raise ValueError("give at least one model name")
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch sizes must be ints >= 1, got {b!r}")
    for n in names:
        get_entry(n)  # unknown names fail before any work
    rows: list[BenchRow] = []
    for name in names:
        entry = get_entry(name)
        size = int(img_size or entry.default_cfg["input_size"][1])
        kwargs = {"img_size": size} if entry.family in ("vit", "mlp_mixer") else {}
        model = create_model(name, **kwargs).eval()
        ref = timm_twin(name, model, size) if compare == "timm" else None
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            with torch.inference_mode():
                engine, engine_name = _engine(backend, model, x, precision)
                runners = {"ours": lambda: engine(x)}
                if backend != "eager":
                    runners["eager"] = lambda: model(x)
                if ref is not None:
                    runners["timm"] = lambda: ref(x)
                block = min(BLOCK, repeats)
                t = time_interleaved(runners, warmup=warmup, repeats=max(1, repeats // block), block=block)
            eager_ms = t.get("eager", t["ours"])
            timm_ms = t.get("timm")
            row = BenchRow(
                model=name,
                backend=backend,
                engine=engine_name,
                batch=batch,
                img_size=size,
                median_ms=t["ours"],
                throughput=batch / t["ours"] * 1e3,
                eager_ms=eager_ms,
                ratio_vs_eager=t["ours"] / eager_ms,
                timm_ms=timm_ms,
                ratio_vs_timm=t["ours"] / timm_ms if timm_ms else None,
                gmacs=count_gmacs(model, x[:1]),
                imagenet_top1=entry.imagenet_top1,
                threads=torch.get_num_threads(),
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def pareto_figure(rows: Sequence[BenchRow]) -> Any:
    """Latency (batch-1 rows, else the smallest batch) against GMACs and, where known, ImageNet top-1.

    Models without a published top-1 appear on the GMACs panel only, and a note under the figure names them.
    """
    from .analysis.plots import add_note, annotate_points, new_figure

    if not rows:
        raise ValueError("rows must hold at least one benchmark row to plot")
    smallest = min(r.batch for r in rows)
    pts = [r for r in rows if r.batch == smallest]
    with_acc = [r for r in pts if r.imagenet_top1 is not None]
    fig = new_figure(figsize=(12 if with_acc else 6.5, 4.8))
    axes = fig.subplots(1, 2 if with_acc else 1, squeeze=False)[0]
    ax = axes[0]
    ax.scatter([r.gmacs for r in pts], [r.median_ms for r in pts], s=22, zorder=3)
    annotate_points(ax, [r.model for r in pts], [r.gmacs for r in pts], [r.median_ms for r in pts], log_x=False,
                    fontsize=7)
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel(f"median latency, batch {smallest} (ms)")
    ax.set_title(f"latency vs compute ({pts[0].backend})")
    ax.grid(True, alpha=0.3)
    if with_acc:
        ax = axes[1]
        xs, ys = [r.median_ms for r in with_acc], [r.imagenet_top1 for r in with_acc]
        ax.scatter(xs, ys, s=22, zorder=3)
        annotate_points(ax, [r.model for r in with_acc], xs, ys, log_x=False, fontsize=7)
        # Pareto front: no other model is both faster and more accurate. Drawn as steps with rings on its models,
        # so a front of a single model is visible too (its legend entry never stands for nothing).
        best, front = -1.0, []
        for r in sorted(with_acc, key=lambda r: r.median_ms):
            if r.imagenet_top1 > best:
                best = r.imagenet_top1
                front.append(r)
        ax.step([r.median_ms for r in front], [r.imagenet_top1 for r in front], where="post", color="tab:red",
                linestyle="--", marker="o", markersize=9, markerfacecolor="none", alpha=0.8, label="Pareto front")
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(f"median latency, batch {smallest} (ms)")
        ax.set_ylabel("ImageNet-1k top-1 (%) of reference weights")
        ax.legend(fontsize=8, loc="best")
        ax.set_title("accuracy vs latency")
        ax.grid(True, alpha=0.3)
        missing = sorted({r.model for r in pts if r.imagenet_top1 is None})
        if missing:
            add_note(fig, f"not on the accuracy panel (no published ImageNet top-1): {', '.join(missing)}")
    fig.suptitle(device_description(), fontsize=8)
    fig.tight_layout()
    return fig


def pareto_plot(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write :func:`pareto_figure` to ``path`` (.png, .pdf or .svg), atomically, cropped to what is drawn."""
    from .analysis.plots import save_figure

    return save_figure(pareto_figure(rows), path)
