"""Figures a user reads (issue 15, item 7): tick labels, legends, titles and notes, checked on the matplotlib
``Figure`` objects the plotting functions return (text and layout as matplotlib lays them out, not pixels)."""
from __future__ import annotations

import json
import re

import pytest

from edgezoo.analysis import format_mac_rate, pareto_figure, ridge_sweep_figure
from edgezoo.analysis.plots import plain_number
from edgezoo.bench import BenchRow, pareto_figure as bench_pareto_figure
from edgezoo.bench import pareto_plot as bench_pareto_plot
from edgezoo.cli import main as cli_main
from edgezoo.train.engine import curves_figure

PLAIN = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _visible_tick_labels(axis) -> list:
    """The tick label Text objects matplotlib drew on ``axis`` (inside the view, non-empty)."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1 for t in ticks if t.label1.get_visible() and t.label1.get_text()
            and lo <= t.get_loc() <= hi]


def _assert_no_overlap(labels, renderer) -> None:
    boxes = sorted((lab.get_window_extent(renderer) for lab in labels), key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, f"tick labels overlap: {[lab.get_text() for lab in labels]}"


def _assert_annotations_inside(ax, renderer) -> None:
    frame = ax.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, f"label {text.get_text()!r} runs off the axes"


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("rate, text", [(4.54e10, "45.4 GMAC/s"), (2e12, "2 TMAC/s"), (1.7e12, "1.7 TMAC/s"),
                                        (4.947e14, "495 TMAC/s"), (5e8, "500 MMAC/s"), (2.34e10, "23.4 GMAC/s")])
def test_mac_rates_get_a_unit_by_magnitude(rate, text):
    assert format_mac_rate(rate) == text


def test_plain_numbers():
    assert [plain_number(v) for v in (0.5, 2.0, 3.0, 20.0, 100.0, 1000.0, 20000.0)] == \
        ["0.5", "2", "3", "20", "100", "1,000", "20,000"]


# ------------------------------------------------------------------------------------------ roofline plots
def _points(latencies, top1s):
    return [dict(name=f"model_{i}", latency_ms=ms, macs=1e6 * (i + 1), top1=t)
            for i, (ms, t) in enumerate(zip(latencies, top1s))]


def test_pareto_log_axis_has_plain_non_overlapping_labels_and_names_stay_inside():
    # under one decade: matplotlib's default labelled 2×10⁰ 3×10⁰ 4×10⁰ … and they ran together
    fig = pareto_figure(_points([1.33, 1.89, 8.84, 14.2], [50.6, 67.4, 72.0, 70.6]))
    renderer = _drawn(fig)
    ax = fig.axes[0]
    labels = _visible_tick_labels(ax.xaxis)
    texts = [lab.get_text() for lab in labels]
    assert texts and all(PLAIN.match(t) for t in texts), texts
    assert {"2", "5", "10"} <= set(texts) and "4" not in texts  # a few minor labels, not all of them
    _assert_no_overlap(labels, renderer)
    _assert_annotations_inside(ax, renderer)  # the right-most model's name included


def test_pareto_log_axis_over_decades_labels_only_decades():
    fig = pareto_figure(_points([1.3, 12.0, 150.0, 1400.0], [50.0, 70.0, 80.0, 85.0]))
    renderer = _drawn(fig)
    ax = fig.axes[0]
    labels = _visible_tick_labels(ax.xaxis)
    assert [lab.get_text() for lab in labels] == ["1", "10", "100", "1,000"]  # the axis has margins
    _assert_no_overlap(labels, renderer)
    _assert_annotations_inside(ax, renderer)


def test_pareto_names_models_without_top1_in_a_note():
    points = _points([1.3, 2.0, 9.0], [50.0, None, 70.0])
    points.append(dict(name="no_accuracy_net", latency_ms=3.0, macs=5e6, top1=None))
    fig = pareto_figure(points)
    notes = [t.get_text() for t in fig.texts]
    assert notes == ["not shown (no published ImageNet top-1): model_1, no_accuracy_net"]
    assert fig.texts[0].get_visible()
    plotted = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(plotted) == ["model_0", "model_2"]
    handles, legend_labels = fig.axes[0].get_legend_handles_labels()
    assert legend_labels == ["Pareto front"] and len(handles[0].get_xdata()) >= 2
    # every model placed: no note
    assert pareto_figure(_points([1.0, 2.0], [50.0, 60.0])).texts == []


def test_ridge_sweep_title_and_log_labels():
    rps = [0.0, 100.0, 200.0]
    fig = ridge_sweep_figure({"a": [1e-3, 2e-2, 4e-2], "b": [3e-3, 5e-2, 9e-2]}, rps, peak_macs_per_s=4.54e10)
    assert fig.axes[0].get_title() == "Roofline latency vs ridge point at a fixed peak of 45.4 GMAC/s"
    _drawn(fig)
    texts = [lab.get_text() for lab in _visible_tick_labels(fig.axes[0].yaxis)]
    assert texts and all(PLAIN.match(t) for t in texts), texts


def test_roofline_cli_sweep_title_and_note(tmp_path, monkeypatch, capsys):
    import edgezoo.analysis as analysis

    titles = []
    real = analysis.plot_ridge_sweep
    monkeypatch.setattr(analysis, "plot_ridge_sweep", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    assert cli_main(["roofline", "mobilenetv1_025", "--sweep", "--plot", str(tmp_path / "s.png"), "--json"]) == 0
    assert titles == ["Pure roofline vs ridge point at phone_cpu's peak (45.4 GMAC/s, float32)"]
    capsys.readouterr()
    # mobilenetv3_small_050 has no published top-1: it is named, not silently dropped
    plot = tmp_path / "p.png"
    assert cli_main(["roofline", "mobilenetv1_025", "mobilenetv3_small_050", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "not in the plot (no published ImageNet top-1): mobilenetv3_small_050" in " ".join(out.split())
    assert cli_main(["roofline", "mobilenetv1_025", "mobilenetv3_small_050", "--plot", str(plot), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["not_plotted"] == ["mobilenetv3_small_050"]


# ---------------------------------------------------------------------------------------------- bench plot
def _row(model, ms, gmacs, top1):
    return BenchRow(model=model, backend="fused", engine="torch", batch=1, img_size=224, median_ms=ms,
                    throughput=1e3 / ms, eager_ms=ms, ratio_vs_eager=1.0, timm_ms=None, ratio_vs_timm=None,
                    gmacs=gmacs, imagenet_top1=top1, threads=1)


@pytest.mark.parametrize("n_front", [1, 2])
def test_bench_legend_entries_have_drawn_artists(n_front):
    rows = [_row("mobilenetv2_100", 9.0, 0.30, 72.0), _row("mobilenetv4_conv_small", 5.2, 0.19, None)]
    if n_front == 2:
        rows.append(_row("mobilenetv3_small_100", 3.1, 0.06, 67.4))
    else:  # slower and less accurate: off the front, which is then a single model
        rows.append(_row("mobilenetv1_100", 12.0, 0.57, 70.6))
    fig = bench_pareto_figure(rows)
    renderer = _drawn(fig)
    acc = fig.axes[1]
    handles, labels = acc.get_legend_handles_labels()
    assert labels == ["Pareto front"]
    (front,) = handles
    assert front in acc.lines and front.get_visible() and len(front.get_xdata()) == n_front
    assert front.get_marker() not in (None, "None", "", " ")  # a one-model front is still drawn
    for ax in fig.axes:
        _assert_annotations_inside(ax, renderer)
    assert "not on the accuracy panel (no published ImageNet top-1): mobilenetv4_conv_small" in [
        t.get_text() for t in fig.texts if t.get_visible()]


def test_bench_plot_is_written_and_checks_its_path(tmp_path):
    rows = [_row("mobilenetv2_100", 9.0, 0.30, 72.0)]
    assert bench_pareto_plot(rows, tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="plot path must end in"):
        bench_pareto_plot(rows, tmp_path / "b.txt")


# ---------------------------------------------------------------------------------------------- curves.png
def _history(n):
    return [dict(epoch=i + 1, train_loss=2.0 - 0.1 * i, val_loss=1.9 - 0.1 * i, val_top1=40.0 + i,
                 ema_top1=38.0 + i, lr=0.1 / (i + 1)) for i in range(n)]


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_training_curves_have_integer_epochs_and_labelled_axes(epochs):
    fig = curves_figure(_history(epochs), "m on digits")
    _drawn(fig)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == list(range(1, epochs + 1)), ticks
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    loss, acc, _ = fig.axes
    assert loss.get_ylabel() == "loss per image" and acc.get_ylabel() == "top-1 (%)"
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["val top-1 (raw)", "val top-1 (EMA)"]
