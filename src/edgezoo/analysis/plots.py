"""Figures: the ridge-point sweep (MobileNetV4, Qin et al., 2024, Fig. 2 style) and accuracy/cost Pareto plots.

Figures are rendered with matplotlib's Agg backend (no display needed) into memory and written atomically.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_FORMATS = (".png", ".pdf", ".svg")


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() not in _FORMATS:
        raise ValueError(f"plot path must end in one of {list(_FORMATS)}, got {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"plot path {str(p)!r} is a directory; give a file name such as {str(p / 'plot.png')!r}")
    return p


def _save(fig: Any, path: Path) -> Path:
    from ..checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower().lstrip("."), dpi=150, bbox_inches="tight")
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise ValueError(f"cannot write plot to {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _figure(**kwargs: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # render with Agg whatever pyplot's interactive backend is
    return fig, fig.add_subplot(1, 1, 1)


def plot_ridge_sweep(
    sweep: Mapping[str, Sequence[float]],
    ridge_points: Sequence[float],
    path: str | os.PathLike,
    *,
    peak_macs_per_s: float,
    title: str | None = None,
) -> Path:
    """Predicted latency (ms, log scale) of each model vs the ridge point, at a fixed peak MAC rate."""
    p = _check_path(path)
    if not sweep:
        raise ValueError("sweep must hold at least one model")
    fig, ax = _figure(figsize=(8, 5))
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors  # enough distinct colours for a zoo-sized legend
    styles = ("-", "--", ":")
    for i, (name, seconds) in enumerate(sweep.items()):
        if len(seconds) != len(ridge_points):
            raise ValueError(f"sweep[{name!r}] has {len(seconds)} values for {len(ridge_points)} ridge points")
        ax.plot(list(ridge_points), [1e3 * s for s in seconds], label=name, linewidth=1.8,
                color=colors[i % len(colors)], linestyle=styles[(i // len(colors)) % len(styles)])
    ax.set_yscale("log")
    ax.set_xlabel("ridge point (MACs per byte) = peak MAC rate / memory bandwidth")
    ax.set_ylabel("predicted latency, batch 1 (ms, log scale)")
    ax.set_title(title or f"Roofline latency vs ridge point at a fixed peak of {peak_macs_per_s / 1e12:g} TMAC/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(sweep) > 8 else 1, loc="upper left")
    return _save(fig, p)


def plot_pareto(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    x: str = "latency_ms",
    y: str = "top1",
    xlabel: str = "predicted latency (ms)",
    ylabel: str | None = None,
    title: str | None = None,
) -> Path:
    """Scatter of ``points`` (dicts with ``name``, ``x`` and ``y`` keys) with the Pareto front drawn.

    ``y="top1"`` (ImageNet top-1 where known; points without it are skipped) is the usual accuracy/latency view;
    ``y="macs"`` shows how well MACs alone predict latency. The front is best-y for lowest-x (for MACs: fewest).
    """
    p = _check_path(path)
    usable = [pt for pt in points if pt.get(y) is not None and pt.get(x) is not None]
    if not usable:
        raise ValueError(f"no point has both {x!r} and {y!r}; cannot draw a Pareto plot")
    higher_is_better = y == "top1"
    fig, ax = _figure(figsize=(8, 5.5))
    xs = [float(pt[x]) for pt in usable]
    ys = [float(pt[y]) / (1e6 if y == "macs" else 1) for pt in usable]
    ax.scatter(xs, ys, s=22, zorder=3)
    for pt, xv, yv in zip(usable, xs, ys):
        ax.annotate(str(pt["name"]), (xv, yv), fontsize=6, xytext=(3, 2), textcoords="offset points")
    front = []
    best = None
    for xv, yv in sorted(zip(xs, ys)):
        if best is None or (yv > best if higher_is_better else yv < best):
            front.append((xv, yv))
            best = yv
    if higher_is_better and len(front) > 1:
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="tab:red", alpha=0.6,
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    if y == "macs":
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or {"top1": "ImageNet-1k top-1 (%)", "macs": "MACs (millions, log scale)"}.get(y, y))
    ax.set_title(title or f"{ax.get_ylabel()} vs {xlabel}")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, p)
