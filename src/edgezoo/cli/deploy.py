"""``edgezoo export | bench | quantize``: thin wrappers over :mod:`edgezoo.deploy` and :mod:`edgezoo.bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import UserError

_EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,8, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,8, got {text!r}")
    return values


def _load_model(name: str, checkpoint: str | None, img_size: int | None) -> tuple[Any, int]:
    """Build ``name`` (with weights from ``checkpoint`` if given); returns (model, input resolution)."""
    from ..factory import create_model
    from ..registry import get_entry

    entry = get_entry(name)
    token_model = entry.family in ("vit", "mlp_mixer")
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist")
        from ..train import load_trained_model, read_metadata

        meta = read_metadata(checkpoint)
        if meta is not None:  # written by `edgezoo train`: it knows its classes and resolution
            model, meta = load_trained_model(checkpoint, model=name)
            return model, int(img_size or meta["img_size"])
    size = int(img_size or entry.default_cfg["input_size"][1])
    kwargs = {"img_size": size} if token_model else {}
    try:
        model = create_model(name, checkpoint=checkpoint, **kwargs)
    except ValueError as exc:
        if checkpoint is not None and "does not fit" in str(exc):
            raise UserError(f"--checkpoint {checkpoint!r} does not match model {name!r}: {str(exc).split('; ', 1)[-1]}") from None
        raise
    return model.eval(), size


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.zoo import check_fits_memory
    from ..deploy import export_model, fuse

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {args.out!r} is a directory; give a file path such as {args.name}{_EXPORT_SUFFIX[args.format]}")
    parent = out.parent if str(out.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: {str(existing)!r} is not a writable folder")
    model, size = _load_model(args.name, args.checkpoint, args.img_size)
    check_fits_memory(args.name, size, arg="--img-size")
    if args.fuse:
        model = fuse(model)
    in_chans = int(model.get_submodule(model.default_cfg["first_conv"]).weight.shape[1])
    x = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    try:
        result = export_model(model, out, format=args.format, example_input=x, dynamic_batch=args.dynamic_batch)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    size_mb = out.stat().st_size / 1e6
    status = "OK" if result.rel_diff is not None and result.rel_diff <= 1e-4 else "MISMATCH"
    print(f"exported {args.name} ({'BN-folded, ' if args.fuse else ''}input 1x{in_chans}x{size}x{size}"
          f"{', dynamic batch' if args.dynamic_batch else ''}) to {out} [{args.format}, {size_mb:.1f} MB]")
    print(f"parity vs PyTorch eager ({result.checked_with}): max |diff| = {result.rel_diff:.2e} of the output scale -> {status}")
    return 0 if status == "OK" else 1


# What each engine name in bench's table means; the ones that appear are explained under the table.
ENGINE_NOTES = {
    "eager": "PyTorch as built",
    "fused": "PyTorch with BatchNorm folded and fuse()'s inference forms",
    "compile": "torch.compile (Inductor)",
    "onnxruntime": "ONNX Runtime CPU, all graph optimizations",
    "openvino": "OpenVINO CPU, fp32, latency hint",
    "openvino/pinned": "OpenVINO with its worker threads pinned to CPU cores (ENABLE_CPU_PINNING); "
                       "measured against unpinned OpenVINO and faster here",
    "int8/onnxruntime": "int8 QDQ model run by ONNX Runtime",
    "int8/openvino": "int8 QDQ model run by OpenVINO",
}


def engine_footnote(engines: list[str], compare: str | None) -> str:
    """The line under bench's table: what the engines shown are and what the ratio columns divide."""
    seen = list(dict.fromkeys(engines))
    notes = [f"{e}: {ENGINE_NOTES[e]}" for e in seen if e in ENGINE_NOTES]
    ratios = "÷eager = engine ms / eager PyTorch ms" + (f", ÷{compare} = engine ms / {compare} ms" if compare else "")
    return "; ".join(notes + [ratios + " (below 1 is faster)"])


def _print_table(rows: list[Any], compare: str | None) -> None:
    from .._console import table_console
    from rich.table import Table

    from ..bench import device_description

    table = Table(title=f"inference latency — {device_description()}")
    cols = ["model", "engine", "batch", "img", "median ms", "img/s", "eager ms", "÷eager"]
    if compare:
        cols += [f"{compare} ms", f"÷{compare}"]
    cols.append("GMACs")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "engine") else "right")
    for r in rows:
        cells = [r.model, r.engine, str(r.batch), str(r.img_size), f"{r.median_ms:.2f}", f"{r.throughput:.1f}",
                 f"{r.eager_ms:.2f}", f"{r.ratio_vs_eager:.2f}×"]
        if compare:
            cells += [f"{r.timm_ms:.2f}" if r.timm_ms else "-", f"{r.ratio_vs_timm:.2f}×" if r.ratio_vs_timm else "-"]
        cells.append(f"{r.gmacs:.2f}")
        table.add_row(*cells)
    console = table_console()
    console.print(table)
    console.print(engine_footnote([r.engine for r in rows], compare), style="dim", markup=False)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.zoo import check_fits_memory
    from ..bench import benchmark, device_description, pareto_plot, rows_as_dicts
    from ..registry import get_entry

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        plot_dir = Path(args.plot).parent if str(Path(args.plot).parent) else Path(".")
        if not plot_dir.is_dir() or not os.access(plot_dir, os.W_OK):
            raise UserError(f"cannot write --plot {args.plot!r}: folder {str(plot_dir)!r} is missing or not writable")
        if Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):  # before the timing, not after it
            raise UserError(f"--plot must end in .png, .pdf or .svg, got {args.plot!r}")
    for name in args.names:  # before any timing starts, not after the first models have run
        get_entry(name)
        check_fits_memory(name, args.img_size, batch=max(args.batch), arg="--img-size")
    if not args.json:
        print(f"device: {device_description()}; median of {args.repeats} runs after {args.warmup} warm-up runs, "
              "in interleaved turns of back-to-back calls with the reference", file=sys.stderr)
    try:
        rows = benchmark(args.names, batches=args.batch, img_size=args.img_size, backend=args.backend,
                         compare=args.compare, warmup=args.warmup, repeats=args.repeats)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"device": device_description(), "rows": rows_as_dicts(rows)}, indent=2))
    else:
        _print_table(rows, args.compare)
    if args.plot:
        pareto_plot(rows, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}", file=sys.stderr)
            no_top1 = sorted({r.model for r in rows if r.imagenet_top1 is None})
            if no_top1 and len(no_top1) < len({r.model for r in rows}):
                print(f"not on its accuracy panel (no published ImageNet top-1): {', '.join(no_top1)}",
                      file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.zoo import check_fits_memory
    from ..deploy import fuse
    from ..deploy.quantize import digits_tensors, quantize_int8, top1

    out = Path(args.out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write --out {args.out!r}: give a file in an existing writable folder")
    model, size = _load_model(args.name, args.checkpoint, args.img_size)
    check_fits_memory(args.name, size, arg="--img-size")  # the engines calibrate and run batch-1 graphs
    if args.calib == "digits":
        _, _, calib, labels = digits_tensors(size)
        calib_x, eval_x, eval_y = calib[: args.calib_images], calib, labels
    else:
        from torchvision import datasets, transforms

        if not Path(args.calib).is_dir():
            raise UserError(f"--calib must be 'digits' or an ImageFolder directory, got {args.calib!r}")
        cfg = model.default_cfg
        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                 transforms.Normalize(cfg["mean"], cfg["std"])])
        ds = datasets.ImageFolder(args.calib, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        calib_x = torch.cat([b for b, _ in loader])[: args.calib_images]
        eval_x, eval_y = None, None
    try:
        q = quantize_int8(model, calib_x, backend=args.backend, method=args.method)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    q.save(out)
    print(f"int8 QDQ model written to {out} (engine: {q.backend}; timings ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in q.timings_ms.items()) + ")")
    if eval_x is not None and getattr(model, "num_classes", 0) == 10:
        fp32 = fuse(model)
        a32, a8 = top1(fp32, eval_x, eval_y), top1(q, eval_x, eval_y)
        print(f"digits top-1: fp32 {a32:.2f}%  int8 {a8:.2f}%  (change {a8 - a32:+.2f} points)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..bench import BENCH_BACKENDS, COMPARE_WITH
    from ..deploy import FORMATS
    from ..deploy.quantize import CALIBRATION_METHODS, QUANT_BACKENDS

    p = sub.add_parser("export", help="export a model to ONNX / TorchScript / ExportedProgram and check parity")
    p.add_argument("name", help="model name (see `edgezoo list`)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (for ONNX Runtime, OpenVINO, ...), torchscript (.pt) or exported-program "
                        "(torch.export, .pt2)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--checkpoint", help="weights: .safetensors/.pth file or training run directory")
    p.add_argument("--img-size", type=_positive_int, help="input resolution (default: the model's)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into conv weights first")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="inference latency: medians, throughput, ratios, optional Pareto plot")
    p.add_argument("names", nargs="+", help="model names")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--img-size", type=_positive_int, help="square input size (default: each model's)")
    p.add_argument("--backend", choices=BENCH_BACKENDS, default="eager",
                   help="eager: PyTorch as built; fused: BatchNorm folded + inference forms; compile: torch.compile; "
                        "onnxruntime / openvino: that engine on the exported graph; int8: ONNX QDQ int8; "
                        "auto: measure the engines and keep the fastest")
    p.add_argument("--compare", choices=COMPARE_WITH, help="also time the same model in timm (needs edgezoo[dev])")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--warmup", type=_positive_int, default=5, help="untimed calls per engine before timing")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed calls per engine; the median is reported")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a latency vs GMACs / accuracy plot (PNG)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quantize", help="int8 post-training static quantization (ONNX QDQ) with calibration data")
    p.add_argument("name", help="model name")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--checkpoint", help="weights: .safetensors/.pth file or training run directory")
    p.add_argument("--calib", default="digits", help="'digits' (bundled) or an ImageFolder directory")
    p.add_argument("--calib-images", type=_positive_int, default=128,
                   help="how many calibration images set the int8 ranges")
    p.add_argument("--img-size", type=_positive_int,
                   help="input resolution (default: the checkpoint's training size, else the model's)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax",
                   help="how activation ranges are chosen: minmax (full observed range), percentile (clips rare "
                        "outliers), entropy (minimises the KL divergence of the histogram)")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default="auto",
                   help="engine that runs the int8 model; auto times ONNX Runtime and OpenVINO and keeps the faster")
    p.set_defaults(func=cmd_quantize)
