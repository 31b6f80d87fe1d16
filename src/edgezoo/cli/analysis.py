"""``edgezoo info``, ``edgezoo roofline`` and ``edgezoo calibrate``: cost analysis from the command line.

Thin wrappers over :mod:`edgezoo.analysis`; ``--json`` prints one JSON object on stdout for scripts.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from . import UserError

_SWEEP_RIDGE_POINTS = tuple(range(0, 501, 10))
# Printed under the roofline table: what its less obvious columns mean.
ROOFLINE_FOOTNOTE = ("compute-bound: share of the predicted latency spent in layers whose MACs take longer than their "
                     "memory traffic (MAC/B above the ridge point, {ridge:.1f} here); the rest is memory-bound. "
                     "MAC/B: MACs per byte moved. top-1: ImageNet-1k accuracy of the reference weights.")


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum`` whose error names ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _console() -> Any:
    from .._console import table_console

    return table_console()


# ----------------------------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    from ..analysis import profile_model, separable_savings
    from ..registry import families_with_override, get_entry, list_models, model_overrides

    entry = get_entry(args.name)  # unknown name -> ValueError with suggestions
    if args.width_mult is not None and "width_mult" not in model_overrides(args.name):
        takes = families_with_override("width_mult")
        sizes = [n for n in list_models() if get_entry(n).family == entry.family and n != args.name]
        raise UserError(f"--width-mult applies to the {', '.join(takes)} families only; {args.name!r} is a "
                        f"{entry.family} model" + (f" (its other sizes: {', '.join(sizes)})" if sizes else ""))
    prof = profile_model(args.name, img_size=args.img_size, width_mult=args.width_mult)
    sep = separable_savings(prof)
    top = prof.top(args.top, key="macs")
    if args.json:
        out = dict(
            name=args.name,
            input_shape=list(prof.input_shape),
            params=prof.params,
            macs=prof.macs,
            weight_bytes=prof.weight_bytes,
            activation_bytes=prof.activation_bytes,
            elementwise=prof.elementwise,
            arithmetic_intensity=prof.arithmetic_intensity,
            layers=len(prof.layers),
            by_kind=prof.by_kind(),
            top_layers=[layer.to_dict() for layer in top],
            separable=dict(pairs=len(sep.pairs), macs=sep.macs, standard_macs=sep.standard_macs,
                           saved_macs=sep.saved_macs, ratio=sep.ratio),
        )
        print(json.dumps(out))
        return 0

    from rich.table import Table

    console = _console()
    console.print(
        f"[bold]{args.name}[/bold] at input {tuple(prof.input_shape)}: {prof.params:,} params, "
        f"{_human(prof.macs)} MACs, weights {_human(prof.weight_bytes, 'B')}, activations "
        f"{_human(prof.activation_bytes, 'B')} (fp32), arithmetic intensity {prof.arithmetic_intensity:.1f} MAC/B, "
        f"{len(prof.layers)} layers"
    )
    kinds = Table(title="cost by layer kind")
    for col in ("kind", "layers", "MACs", "MAC share", "bytes", "elementwise ops"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, row in sorted(prof.by_kind().items(), key=lambda kv: -kv[1]["macs"]):
        share = row["macs"] / prof.macs if prof.macs else 0.0
        kinds.add_row(kind, str(row["layers"]), _human(row["macs"]), f"{100 * share:.1f}%", _human(row["bytes"], "B"),
                      _human(row["elementwise"]))
    console.print(kinds)
    table = Table(title=f"{len(top)} costliest layers (by MACs)")
    for col in ("layer", "type", "output", "params", "MACs", "bytes", "MAC/B"):
        table.add_column(col, justify="left" if col in ("layer", "type", "output") else "right")
    for layer in top:
        ai = layer.arithmetic_intensity
        table.add_row(layer.name, layer.kind, "×".join(map(str, layer.output_shape)), _human(layer.params),
                      _human(layer.macs), _human(layer.bytes, "B"), f"{ai:.1f}" if math.isfinite(ai) else "inf")
    console.print(table)
    if sep.pairs:
        console.print(
            f"depthwise-separable convs: {len(sep.pairs)} depthwise→pointwise pairs cost {_human(sep.macs)} MACs; "
            f"the standard convs they replace would cost {_human(sep.standard_macs)} "
            f"({100 * sep.ratio:.1f}%, saving {_human(sep.saved_macs)} MACs — MobileNetV1's 1/N + 1/Dk²)"
        )
    else:
        console.print("no depthwise→pointwise conv pairs (no separable-conv savings to report)")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# roofline


def _profiles(names: list[str], dtype: Any, img_size: int | None) -> dict[str, Any]:
    from ..analysis import profile_model

    if len(names) == 1:
        return {names[0]: profile_model(names[0], dtype=dtype, img_size=img_size)}
    from rich.progress import Progress

    out = {}
    with Progress(console=_err_console(), transient=True) as bar:
        task = bar.add_task("profiling", total=len(names))
        for name in names:
            bar.update(task, description=f"profiling {name}")
            out[name] = profile_model(name, dtype=dtype, img_size=img_size)
            bar.advance(task)
    return out


def _err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _check_plot_path(path: str | None) -> None:
    """Refuse an unwritable plot path before the (slower) profiling starts."""
    if path is None:
        return
    import os
    from pathlib import Path

    p = Path(path)
    if p.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot must end in .png, .pdf or .svg, got {path!r}")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write plot to {path!r}: {str(probe)!r} is not a writable directory")


def cmd_roofline(args: argparse.Namespace) -> int:
    from ..analysis import (
        format_mac_rate,
        get_hardware,
        plot_pareto,
        plot_ridge_sweep,
        points_without,
        ridge_sweep,
        roofline,
    )
    from ..registry import get_entry, list_models

    names: list[str] = []
    for pattern in args.names:
        matched = list_models(pattern) if any(c in pattern for c in "*?[") else [get_entry(pattern).name]
        if not matched:
            raise UserError(f"no model matches pattern {pattern!r}")
        names.extend(n for n in matched if n not in names)
    _check_plot_path(args.plot)
    hw = get_hardware(args.hardware, calibrate_if_missing=False) if args.hardware != "host" else _host(args)
    if args.ridge_point is not None:
        hw = hw.with_ridge_point(args.ridge_point)
    profiles = _profiles(names, hw.torch_dtype, args.img_size)
    results = {name: roofline(prof, hw) for name, prof in profiles.items()}

    sweep = None
    not_plotted: list[str] = []
    if args.sweep:
        sweep = ridge_sweep(profiles, peak_macs_per_s=hw.peak_macs_per_s, ridge_points=_SWEEP_RIDGE_POINTS)
    if args.plot:
        if args.sweep:
            plot_ridge_sweep(sweep, _SWEEP_RIDGE_POINTS, args.plot, peak_macs_per_s=hw.peak_macs_per_s,
                             title=f"Pure roofline vs ridge point at {hw.name}'s peak "
                                   f"({format_mac_rate(hw.peak_macs_per_s)}, {hw.dtype})")
        else:
            points = [dict(name=n, latency_ms=r.latency_ms, macs=profiles[n].macs, top1=get_entry(n).imagenet_top1)
                      for n, r in results.items()]
            use_top1 = any(p["top1"] is not None for p in points)
            if use_top1:
                not_plotted = points_without(points, "top1")
            plot_pareto(points, args.plot, y="top1" if use_top1 else "macs",
                        xlabel=f"predicted latency on {hw.name} (ms, log scale)")

    rows = []
    for name, res in results.items():
        prof = profiles[name]
        row = res.to_dict()
        row.update(name=name, params=prof.params, macs=prof.macs, bytes=prof.bytes,
                   arithmetic_intensity=prof.arithmetic_intensity, imagenet_top1=get_entry(name).imagenet_top1)
        rows.append(row)
    rows.sort(key=lambda r: r["latency_ms"])
    if args.json:
        out: dict[str, Any] = dict(hardware=hw.to_dict(), ridge_point=hw.ridge_point, models=rows)
        if sweep is not None:
            out["sweep"] = dict(ridge_points=list(_SWEEP_RIDGE_POINTS),
                                latency_ms={n: [1e3 * s for s in v] for n, v in sweep.items()})
        if args.plot:
            out["plot"] = str(args.plot)
            out["not_plotted"] = not_plotted
        print(json.dumps(out))
        return 0

    from rich.table import Table

    console = _console()
    console.print(f"[bold]{hw.name}[/bold]: {hw.peak_macs_per_s / 1e9:,.1f} GMAC/s, {hw.bytes_per_s / 1e9:,.1f} GB/s, "
                  f"ridge point {hw.ridge_point:.1f} MAC/B, {hw.dtype}"
                  + (f", {1e6 * hw.layer_overhead_s:.1f} µs/layer, depthwise efficiency {hw.depthwise_efficiency:.2f}"
                     if hw.layer_overhead_s or hw.depthwise_efficiency < 1 else ""))
    if hw.source:
        console.print(f"[dim]source: {hw.source}[/dim]")
    table = Table(title="roofline latency, batch 1 (sorted)")
    for col in ("model", "params", "MACs", "bytes", "MAC/B", "latency (ms)", "compute-bound", "top-1"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["name"], _human(r["params"]), _human(r["macs"]), _human(r["bytes"], "B"),
                      f"{r['arithmetic_intensity']:.1f}", f"{r['latency_ms']:.3f}",
                      f"{100 * r['compute_bound_fraction']:.0f}%",
                      "-" if r["imagenet_top1"] is None else f"{r['imagenet_top1']:.1f}")
    console.print(table)
    console.print(ROOFLINE_FOOTNOTE.format(ridge=hw.ridge_point), style="dim", markup=False)
    if sweep is not None:
        sweep_table = Table(title="pure-roofline latency (ms) vs ridge point (MAC/B) at fixed peak")
        shown = (0, 50, 100, 200, 300, 500)
        sweep_table.add_column("model")
        for rp in shown:
            sweep_table.add_column(f"RP {rp}", justify="right")
        for name, seconds in sweep.items():
            sweep_table.add_row(name, *(f"{1e3 * seconds[_SWEEP_RIDGE_POINTS.index(rp)]:.3f}" for rp in shown))
        console.print(sweep_table)
    if args.plot:
        console.print(f"plot written to {args.plot}")
        if not_plotted:
            console.print(f"not in the plot (no published ImageNet top-1): {', '.join(not_plotted)}")
    return 0


def _host(args: argparse.Namespace) -> Any:
    from ..analysis import calibrate, load_host, save_host

    hw = load_host()
    if hw is None:
        _err_console().print("no host calibration stored yet: calibrating this host (about a minute)…")
        hw = calibrate(progress=lambda m: _err_console().print(f"  measuring {m}"))
        path = save_host(hw)
        _err_console().print(f"stored host calibration in {path}")
    return hw


# ----------------------------------------------------------------------------------------------------------------
# calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..analysis import calibrate, save_host

    err = _err_console()
    hw = calibrate(threads=args.threads, quick=args.quick, progress=lambda m: err.print(f"measuring {m}"))
    path = save_host(hw)
    if args.json:
        print(json.dumps(dict(hardware=hw.to_dict(), ridge_point=hw.ridge_point, path=str(path))))
        return 0
    console = _console()
    console.print(f"[bold]host[/bold]: peak {hw.peak_macs_per_s / 1e9:.1f} GMAC/s, bandwidth {hw.bytes_per_s / 1e9:.1f} GB/s, "
                  f"ridge point {hw.ridge_point:.2f} MAC/B, layer overhead {1e6 * hw.layer_overhead_s:.1f} µs, "
                  f"depthwise efficiency {hw.depthwise_efficiency:.3f}, {hw.threads} thread(s)")
    console.print(f"stored in {path} (use with --hardware host)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..analysis import PRESETS

    p = sub.add_parser("info", help="a model's params, MACs, bytes, costliest layers and separable-conv savings")
    p.add_argument("name", help="model name (see `edgezoo list`)")
    p.add_argument("--img-size", type=_positive_int, default=None, help="square input size (default: the model's)")
    p.add_argument("--width-mult", type=_positive_float, default=None, help="width multiplier α (MobileNet V1–V3)")
    p.add_argument("--top", type=_positive_int, default=10, help="how many costliest layers to list")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("roofline", help="roofline latency of models on a hardware preset or this host")
    p.add_argument("names", nargs="+", metavar="NAME", help="model names or fnmatch patterns ('mobilenetv4*')")
    p.add_argument("--hardware", default="phone_cpu", choices=[*PRESETS, "host"], metavar="PRESET",
                   help=f"one of {', '.join([*PRESETS, 'host'])} (default: phone_cpu); host calibrates on first use")
    p.add_argument("--ridge-point", type=_positive_float, default=None,
                   help="override the preset's bandwidth so its ridge point is this many MACs/byte")
    p.add_argument("--img-size", type=_positive_int, default=None, help="square input size (default: each model's)")
    p.add_argument("--sweep", action="store_true", help="sweep the ridge point 0→500 at the preset's peak")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write a figure (.png): the sweep with --sweep, else a Pareto plot (top-1 or MACs vs latency)")
    p.add_argument("--json", action="store_true", help='print {"models": [{"name", "latency_ms", ...}]}')
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("calibrate", help="measure this host (GEMM peak, copy bandwidth, overheads) for --hardware host")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads to calibrate with")
    p.add_argument("--quick", action="store_true", help="small, fast measurement (less accurate)")
    p.add_argument("--json", action="store_true", help="print the measured hardware as one JSON object")
    p.set_defaults(func=cmd_calibrate)
