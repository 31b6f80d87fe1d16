"""Figures: the ridge-point sweep (MobileNetV4, Qin et al., 2024, Fig. 2 style) and accuracy/cost Pareto plots.

Figures are rendered with matplotlib's Agg backend (no display needed) into memory and written atomically. Each
plot has a ``*_figure`` function that builds and returns the matplotlib ``Figure`` (what tests inspect: tick
labels, legend entries, titles, notes) and a ``plot_*`` function that writes it to a file.
"""
from __future__ import annotations

import io
import math
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


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` drawn by Agg whatever pyplot's interactive backend is (pyplot's global state is
    left alone, so a library call never changes the user's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _figure(**kwargs: Any) -> tuple[Any, Any]:
    fig = new_figure(**kwargs)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (.png, .pdf or .svg) atomically, cropped to what is drawn (no label cut off)."""
    return _save(fig, _check_path(path))


_RATE_UNITS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def format_mac_rate(macs_per_s: float) -> str:
    """A MAC rate with the unit chosen by its magnitude and three significant digits: ``4.54e10`` → ``45.4 GMAC/s``."""
    value = float(macs_per_s)
    for scale, prefix in _RATE_UNITS:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}MAC/s"
    return f"{value:.3g} MAC/s"


def plain_number(x: float) -> str:
    """A tick label as a plain number (``0.5``, ``3``, ``20``, ``1,000``), never ``3×10⁰``."""
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.3g}".replace("e-0", "e-")


def plain_log_axis(axis: Any, lo: float, hi: float) -> None:
    """Plain-number labels on a log ``axis`` spanning ``[lo, hi]``: every decade, plus a few minor ticks
    (2 and 5, or 2, 3 and 5 within one decade) only when the axis spans too few decades to show several majors.

    matplotlib's default labels minor ticks of a short log axis in scientific notation (``3×10⁰4×10⁰``), which
    overlap; these do not.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(max(hi, lo * 1.0001) / lo) if lo > 0 else 99.0
    labelled = (2, 3, 5) if decades <= 1.2 else (2, 5) if decades <= 2.2 else ()
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: plain_number(x)))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    if not labelled:
        axis.set_minor_formatter(NullFormatter())
        return

    def minor(x: float, _pos: Any) -> str:
        mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6)
        return plain_number(x) if mantissa in labelled else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def annotate_points(ax: Any, names: Sequence[str], xs: Sequence[float], ys: Sequence[float], *, log_x: bool,
                    fontsize: float = 6) -> None:
    """Name each point; names of points in the right-most fifth of the axis go to their left, so they stay
    inside the axes instead of running off the figure."""
    if not xs:
        return
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    lo, hi = tx(min(xs)), tx(max(xs))
    span = (hi - lo) or 1.0
    for name, xv, yv in zip(names, xs, ys):
        right = (tx(xv) - lo) / span > 0.8
        ax.annotate(str(name), (xv, yv), fontsize=fontsize, xytext=(-3 if right else 3, 2),
                    textcoords="offset points", ha="right" if right else "left")


def add_note(fig: Any, text: str) -> Any:
    """A visible line of text under the axes (kept in the saved image by the tight bounding box)."""
    return fig.text(0.01, -0.01, text, fontsize=7, ha="left", va="top", wrap=True)


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
    fig = ridge_sweep_figure(sweep, ridge_points, peak_macs_per_s=peak_macs_per_s, title=title)
    return _save(fig, p)


def ridge_sweep_figure(
    sweep: Mapping[str, Sequence[float]],
    ridge_points: Sequence[float],
    *,
    peak_macs_per_s: float,
    title: str | None = None,
) -> Any:
    """The figure :func:`plot_ridge_sweep` writes."""
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
    ms = [1e3 * s for seconds in sweep.values() for s in seconds if s > 0]
    if ms:
        plain_log_axis(ax.yaxis, min(ms), max(ms))
    ax.set_xlabel("ridge point (MACs per byte) = peak MAC rate / memory bandwidth")
    ax.set_ylabel("predicted latency, batch 1 (ms, log scale)")
    ax.set_title(title or f"Roofline latency vs ridge point at a fixed peak of {format_mac_rate(peak_macs_per_s)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(sweep) > 8 else 1, loc="upper left")
    return fig


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

    ``y="top1"`` (ImageNet top-1 where known) is the usual accuracy/latency view; points without a ``y`` value
    cannot be placed on it and are listed in a note under the plot (see :func:`points_without`), not dropped
    silently. ``y="macs"`` shows how well MACs alone predict latency. The front is best-y for lowest-x.
    """
    p = _check_path(path)
    fig = pareto_figure(points, x=x, y=y, xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, p)


def points_without(points: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Names of the points that have no ``key`` value (e.g. models without a published top-1)."""
    return [str(pt["name"]) for pt in points if pt.get(key) is None]


_MISSING_WHAT = {"top1": "no published ImageNet top-1", "macs": "no MAC count"}


def pareto_figure(
    points: Sequence[Mapping[str, Any]],
    *,
    x: str = "latency_ms",
    y: str = "top1",
    xlabel: str = "predicted latency (ms)",
    ylabel: str | None = None,
    title: str | None = None,
) -> Any:
    """The figure :func:`plot_pareto` writes."""
    usable = [pt for pt in points if pt.get(y) is not None and pt.get(x) is not None]
    if not usable:
        raise ValueError(f"no point has both {x!r} and {y!r}; cannot draw a Pareto plot")
    higher_is_better = y == "top1"
    fig, ax = _figure(figsize=(8, 5.5))
    xs = [float(pt[x]) for pt in usable]
    ys = [float(pt[y]) / (1e6 if y == "macs" else 1) for pt in usable]
    ax.scatter(xs, ys, s=22, zorder=3)
    annotate_points(ax, [str(pt["name"]) for pt in usable], xs, ys, log_x=True)
    front = []
    best = None
    for xv, yv in sorted(zip(xs, ys)):
        if best is None or (yv > best if higher_is_better else yv < best):
            front.append((xv, yv))
            best = yv
    if higher_is_better and len(front) > 1:
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="tab:red", alpha=0.6,
                label="Pareto front")
        ax.legend(fontsize=8, loc="best")
    ax.set_xscale("log")
    ax.margins(x=0.06)
    plain_log_axis(ax.xaxis, min(xs), max(xs))
    if y == "macs":
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis, min(ys), max(ys))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or {"top1": "ImageNet-1k top-1 (%)", "macs": "MACs (millions, log scale)"}.get(y, y))
    ax.set_title(title or f"{ax.get_ylabel()} vs {xlabel}")
    ax.grid(True, which="both", alpha=0.3)
    missing = points_without(points, y)
    if missing:
        add_note(fig, f"not shown ({_MISSING_WHAT.get(y, f'no {y!r} value')}): {', '.join(missing)}")
    no_x = [name for name in points_without(points, x) if name not in missing]
    if no_x:
        add_note(fig, f"not shown (no {x!r} value): {', '.join(no_x)}")
    return fig
